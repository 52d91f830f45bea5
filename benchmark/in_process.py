"""Run a training script's main loop inside this process, with any of its functions patched first.

    module = load_script("blpo_continuous")
    module.update_minibatch = my_wrapper
    run_dir = run_main(module, ["--env-id", "Hopper-v4", "--total-timesteps", "4096"], cwd)

The scripts keep CleanRL's `if __name__ == "__main__":` block; `run_main` executes that block in the module's own
namespace, so the main loop looks its helpers up there and calls whatever was patched in.
"""

import importlib.util
import itertools
import os
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_copies = itertools.count()


def load_script(name: str):
    """A fresh copy of the script module `name` (e.g. "blpo_continuous"), its main loop not run."""
    spec = importlib.util.spec_from_file_location(f"{name}_copy{next(_copies)}", ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_main(module, argv: list[str], cwd: Path) -> Path:
    """Run the script's main block in the module's namespace, in `cwd`, with command-line flags `argv`; return the
    run directory it wrote under `cwd / "runs"`."""
    source = Path(module.__file__).read_text()
    head, main = source.split('\nif __name__ == "__main__":\n')
    code = compile("\n" * (head.count("\n") + 2) + textwrap.dedent(main), module.__file__, "exec")
    cwd.mkdir(parents=True, exist_ok=True)
    previous_cwd, previous_argv = os.getcwd(), sys.argv
    os.chdir(cwd)
    sys.argv = [module.__file__, *argv]
    try:
        exec(code, module.__dict__)
    finally:
        os.chdir(previous_cwd)
        sys.argv = previous_argv
    run_dirs = list((cwd / "runs").iterdir())
    assert len(run_dirs) == 1, run_dirs
    return run_dirs[0]
