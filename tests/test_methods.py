"""A method is only its module: a toy method registered here (a few lines)
trains through `main`, compiles through `plan`, and gets one clear line from
`export` and `init_from`, which it supports neither of; nothing outside
methods/ names it (docs/ARCHITECTURE.md, "Adding a method")."""
import importlib.util
import textwrap

import jax.numpy as jnp
import ml_collections
import pytest
from absl import flags
from flax import nnx

from matpac_jax import cli, export, methods, restore
from matpac_jax import main as main_cmd
from matpac_jax.data import demo
from matpac_jax.methods.base import EmbeddingSpec, InputSpec, Method
from matpac_jax.planning import analysis, targets
from matpac_jax.models.layers import xavier_linear


class ToyStudent(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.proj = xavier_linear(80, 80, ("embed", "mlp"), dtype=jnp.float32, rngs=rngs)

    def __call__(self, x):  # (B, 80, T) -> (B, T, 80)
        return self.proj(jnp.swapaxes(x, 1, 2))


class ToyModel(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.student = ToyStudent(rngs)


class ToyMethod(Method):
    """Predicts each frame from itself: the smallest loss that trains."""

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        self.input = InputSpec("matpac", (80, config.data.crop_frames))
        self.embedding = EmbeddingSpec("vit", "matpac")

    def build(self, rngs):
        return ToyModel(rngs)

    def loss(self, model, batch, rng, step):
        x = jnp.swapaxes(batch["x"], 1, 2)
        return jnp.mean((model.student(batch["x"]) - x) ** 2), {}

    def encoder(self, model):
        return model.student


CONFIG = textwrap.dedent('''
    from matpac_jax.training import defaults
    import ml_collections

    def get_config():
        c = defaults.base(method="toy", frontend="matpac")
        c.model = ml_collections.ConfigDict(dict(dtype="float32", remat="none", attention="xla",
                                                 activation_dtype="float32",
                                                 cpu_workarounds="auto"))
        c.data.crop_frames, c.batch_size, c.total_steps = 64, 8, 2
        c.log_every = c.checkpoint_every = 1
        c.opt.warmup_steps = 1
        return c
''')


@pytest.fixture()
def toy(monkeypatch, tmp_path):
    monkeypatch.setitem(methods.METHODS, "toy", ToyMethod)
    path = tmp_path / "toy.py"
    path.write_text(CONFIG)
    return str(path)


def _main(capsys, *args) -> tuple[int, str]:
    """`python -m matpac_jax.main ARGS`, in this process (the toy is registered here)."""
    try:
        cli.parse(flags.FLAGS, list(args), "python -m matpac_jax.main", "")
        code = cli.run(main_cmd.main, ["main"])
    finally:
        flags.FLAGS.unparse_flags()
        flags.FLAGS.mark_as_parsed()
    return code, capsys.readouterr().err.strip()


def test_a_toy_method_trains_through_main_and_is_refused_by_export_and_init_from(
        toy, tmp_path, capsys, fixtures_dir):
    shards = demo.ensure_demo_shards(str(tmp_path / "demo"), "matpac", num_clips=16)
    wd = tmp_path / "wd"
    code, err = _main(capsys, f"--config={toy}", f"--workdir={wd}",
                      f"--config.data.path={shards}")
    assert code == 0, err
    assert restore.finished_steps(str(wd))[0] == 2
    method, model, _ = methods.load_workdir(str(wd))
    assert isinstance(method, ToyMethod) and isinstance(model, ToyModel)

    code = cli.run(export.main, [f"--checkpoint={wd}", f"--out={tmp_path / 'toy.pt'}"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err == ("error: config.method='toy': no official layout to export "
                                 "to; a fine-tuned encoder is used with matpac_jax.load")
    code, err = _main(capsys, f"--config={toy}", f"--workdir={tmp_path / 'wd2'}",
                      f"--config.data.path={shards}",
                      f"--config.init_from={fixtures_dir / 'm2d_checkpoint-300.pth'}")
    assert code == 1 and err.splitlines()[-1] == (
        f"error: config.init_from='{fixtures_dir / 'm2d_checkpoint-300.pth'}': method 'toy' "
        "does not take it (fine-tuning reads its encoder from finetune.checkpoint)")


def test_a_toy_method_compiles_for_a_tpu_slice(toy):  # a second or two: the toy is tiny
    if importlib.util.find_spec("libtpu") is None:
        pytest.skip("libtpu is not installed: pip install -e '.[dev]' brings it")

    spec = importlib.util.spec_from_file_location("toy_config", toy)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    target = targets.parse("v5p-8")
    p = analysis.analyse(module.get_config(), target, targets.devices(target))
    assert p["devices"] == 4 and p["fits"] and p["flops_per_step"] > 0
