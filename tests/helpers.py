"""Shared by tests: configs from configs/ with overrides, workdirs without training."""
import importlib.util
import pathlib

from flax import nnx

from matpac_jax import methods
from matpac_jax.methods import init_from
from matpac_jax.training import checkpoint as ckpt
from matpac_jax.training import step as step_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def config(name, **overrides):
    spec = importlib.util.spec_from_file_location(name, ROOT / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config("demo")
    c.lock()
    return override(c, overrides)


def override(c, overrides: dict):
    """`c` with `{'dotted.key': value}` set, as `--config.dotted.key=value` would."""
    for key, value in overrides.items():
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


def saved_at_start(c, workdir, step=0, edit=None):
    """A workdir holding the run's state as built (pretrained parts copied in),
    after `edit(model)` if given."""
    c, pretrained = init_from.resolve(c, str(workdir))
    method = methods.get(c, pretrained)
    run = step_lib.build(c, method)
    state = run.state
    if edit is not None:
        ts = nnx.merge(run.graphdef, state)
        edit(ts.model)
        state = nnx.state(ts)
    saver = ckpt.Checkpointer(str(workdir), every=1, keep=1, asynchronous=False)
    saver.save(step, state, None, c, architecture=method.architecture(), force=True)
    saver.close()
    return str(workdir)
