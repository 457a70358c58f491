"""A write that runs out of room is one line naming the file, the space and what to do; nothing written is lost.

The writes fail for real: a child process lowers its file-size limit (RLIMIT_FSIZE), so the kernel refuses
the bytes exactly as a full disk does (EFBIG instead of ENOSPC), through torch.save, safetensors and open().
The messages for ENOSPC were checked by hand on a 150 MB tmpfs (docs/benchmarks.md has no figure for it:
it is behaviour, not speed)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from unveil.cli import main
from unveil.io import NoSpaceError, atomic_write, is_out_of_space, no_space_message

pytestmark = pytest.mark.skipif(not hasattr(os, "fork") or sys.platform != "linux", reason="RLIMIT_FSIZE: Linux")

WRITERS = """
import resource, sys, torch
from pathlib import Path
from safetensors.torch import save_file
from unveil.io import NoSpaceError, atomic_write
root = Path(sys.argv[1])
state = {"w": torch.ones(1_000_000)}  # 4 MB, over the 1 MB limit set below
writers = {
    "torch.save": lambda tmp: torch.save(state, tmp),
    "safetensors": lambda tmp: save_file(state, tmp),
    "open": lambda tmp: Path(tmp).write_bytes(bytes(4_000_000)),
}
for name, write in writers.items():
    (root / name).write_text("the previous file")
resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, resource.RLIM_INFINITY))
for name, write in writers.items():
    try:
        atomic_write(root / name, write, needed=4_000_000, advice="; try again")
        print(name, "WROTE")
    except NoSpaceError as exc:
        print(name, "|", exc)
"""


@pytest.mark.dist
def test_every_writer_failing_for_room_is_one_line_and_keeps_the_old_file(tmp_path):
    proc = subprocess.run([sys.executable, "-c", WRITERS, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = dict(line.split(" | ", 1) for line in proc.stdout.strip().splitlines() if " | " in line)
    assert sorted(lines) == ["open", "safetensors", "torch.save"], proc.stdout
    for name, message in lines.items():
        assert f"no space to write {tmp_path / name}" in message and "about 4.0 MB" in message, message
        assert "file-size limit" in message and message.endswith("; try again"), message
        assert (tmp_path / name).read_text() == "the previous file"  # the old file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["open", "safetensors", "torch.save"]  # no temp left


# The second checkpoint of a run fails as it would on a full disk: the first is written normally, then the
# child lowers its file-size limit below the checkpoint's size.
SECOND_CHECKPOINT_FAILS = """
import resource, sys
import unveil.runs.checkpoint as ck
from unveil.cli import main
real, calls = ck.atomic_write, []
def atomic_write(path, write, **kw):
    calls.append(path)
    if len(calls) == 2:
        resource.setrlimit(resource.RLIMIT_FSIZE, (10_000_000, resource.RLIM_INFINITY))
    return real(path, write, **kw)
ck.atomic_write = atomic_write
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.dist
def test_a_full_disk_at_the_second_checkpoint_is_one_line_and_the_run_resumes(tiny_folder, tmp_path):
    run = tmp_path / "run"
    args = ["pretrain", "--data", str(tiny_folder), "--out", str(run), "--method", "simclr", "data.image_size=16",
            "train.batch_size=16", "train.epochs=1", "train.ckpt_every_steps=1", "train.monitor=none",
            "train.progress=false", "backbone.cifar_stem=false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", SECOND_CHECKPOINT_FAILS, *args], capture_output=True, text=True,
                          timeout=300, env=env)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in err if line.startswith("unveil: error:")]
    assert len(errors) == 1 and f"no space to write {run / 'last.ckpt'}" in errors[0], err
    assert f"the previous last.ckpt is intact: continue with `unveil pretrain --resume {run}`" in errors[0]
    assert sorted(p.name for p in run.iterdir() if p.name.endswith(".tmp")) == []

    from unveil.runs.checkpoint import load_checkpoint

    assert load_checkpoint(run / "last.ckpt")["step"] == 1  # the first checkpoint, whole
    assert main(["pretrain", "--resume", str(run)]) == 0  # room again: the run finishes from step 1
    assert load_checkpoint(run / "last.ckpt")["step"] > 1  # 4 steps of 16 on the 77 training images


def test_writes_outside_atomic_write_are_one_line_too(monkeypatch, capsys, tmp_path):
    """A log or report written some other way: the CLI turns ENOSPC into the same one line."""
    from unveil import cli

    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "log.csv"))

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: _Fixed(parser, full))
    assert cli.main(["pretrain", "--data", "x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"unveil: error: no space to write {tmp_path / 'log.csv'}"), err

    def unnamed(args):  # an error that names no file still gets one line, without an invented path
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(cli, "build_parser", lambda: _Fixed(parser, unnamed))
    assert cli.main(["pretrain", "--data", "x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("unveil: error: no space left while writing ("), err


class _Fixed:
    """A parser whose every command is ``func``."""

    def __init__(self, parser, func):
        self.parser, self.func = parser, func

    def parse_args(self, argv):
        args = self.parser.parse_args(argv)
        args.func = self.func
        return args


def test_what_counts_as_out_of_space():
    assert is_out_of_space(OSError(errno.ENOSPC, "x")) and is_out_of_space(OSError(errno.EDQUOT, "x"))
    assert is_out_of_space(RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"))
    assert is_out_of_space(Exception("Error while serializing: I/O error: No space left on device (os error 28)"))
    assert not is_out_of_space(OSError(errno.EACCES, "Permission denied"))
    assert not is_out_of_space(RuntimeError("size mismatch"))
    message = no_space_message(Path("/nonexistent/dir/f.ckpt"), OSError(errno.ENOSPC, "x"), needed=2_500_000)
    assert message.startswith("no space to write /nonexistent/dir/f.ckpt: it needs about 2.5 MB and") and "unknown" in message


def test_other_write_errors_keep_their_traceback(tmp_path):
    def broken(tmp):
        raise ValueError("a bug in the writer")

    with pytest.raises(ValueError, match="a bug in the writer"):
        atomic_write(tmp_path / "f", broken)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(NoSpaceError):
        atomic_write(tmp_path / "g", lambda tmp: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
    assert list(tmp_path.iterdir()) == []
