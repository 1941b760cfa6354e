"""Ranged reads from a GCS server: what one read costs the client.

  python benchmarks/bench_gcs_reads.py [--size=160000] [--burst=64] [--bursts=20]

Starts fake-gcs-server on localhost (benchmarks/gcs_emulator.py), writes a
64 MiB object, then times bursts of `--burst` concurrent ranged reads of
`--size` bytes at random offsets with gcsfs (`storage.read_ranges`, what the
loader uses) and with tensorstore's C++ GCS key-value store, interleaved, each
client warmed up by one untimed round. Prints reads/s of wall time and per
CPU-second of this process (the client's cost; the server is another process).
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np
from absl import flags

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from benchmarks import gcs_emulator  # noqa: E402
from matpac_jax import cli, storage  # noqa: E402

FLAGS = flags.FlagValues()
flags.DEFINE_integer("size", 160_000, "bytes per read (a 10-s MATPAC record: ~160 KB)",
                     flag_values=FLAGS)
flags.DEFINE_integer("burst", 64, "reads in flight at once (the loader: one batch)",
                     flag_values=FLAGS)
flags.DEFINE_integer("bursts", 20, "bursts per timed round", flag_values=FLAGS)
flags.DEFINE_integer("rounds", 2, "interleaved rounds per client", flag_values=FLAGS)


def main(argv=None) -> None:
    cli.parse(FLAGS, argv, "python benchmarks/bench_gcs_reads.py", __doc__)
    _, server = gcs_emulator.start()
    bucket = gcs_emulator.make_bucket("bench-reads")
    rng = np.random.default_rng(0)
    blob = f"{bucket}/blob"
    storage.write_bytes(blob, rng.bytes(64 << 20))
    import tensorstore as ts

    kv = ts.KvStore.open({"driver": "gcs", "bucket": "bench-reads", "context": {
        "gcs_request_concurrency": {"limit": storage.READ_CONCURRENCY}}}).result()
    clients = {
        "gcsfs": lambda st: storage.read_ranges([blob] * len(st), st, [s + FLAGS.size for s in st]),
        "tensorstore": lambda st: [f.result().value for f in [
            kv.read("blob", byte_range=slice(s, s + FLAGS.size)) for s in st]],
    }

    def timed(read, bursts):
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(bursts):
            read(rng.integers(0, (64 << 20) - FLAGS.size, FLAGS.burst).tolist())
        n = bursts * FLAGS.burst
        return n / (time.perf_counter() - wall), n / (time.process_time() - cpu)

    for read in clients.values():
        timed(read, FLAGS.bursts)  # connections, pools
    print(f"load average {os.getloadavg()[0]:.2f}; {FLAGS.burst} x {FLAGS.size} B per burst")
    for r in range(FLAGS.rounds):
        for name, read in clients.items():
            wall, per_cpu = timed(read, FLAGS.bursts)
            print(f"round {r + 1} {name}: {wall:.0f} reads/s, {per_cpu:.0f} per CPU-s, "
                  f"{wall * FLAGS.size / 1e6:.0f} MB/s")
    server.terminate()


if __name__ == "__main__":
    main()
