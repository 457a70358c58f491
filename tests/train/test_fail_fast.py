"""DDP fails fast: an error on one rank ends every rank within seconds, with that rank's one-line
message, instead of leaving the others at a barrier until the process group's timeout."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest

SCRIPT = textwrap.dedent('''
    import sys
    import torch
    from unveil import methods
    from unveil.errors import UserError
    from unveil.methods.simclr import SimCLR
    from unveil import dist


    @methods.register("simclr_failing_on_rank1")
    class Failing(SimCLR):
        calls = 0

        def forward(self, images, labels, generator):
            Failing.calls += 1
            if dist.rank() == 1 and Failing.calls == 2:
                raise UserError("cannot read batch 2 on this node")
            return super().forward(images, labels, generator)


    from unveil.cli import main
    sys.exit(main(sys.argv[1:]))
''')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("launcher", ["plain", "torchrun"])
@pytest.mark.dist
def test_error_on_one_rank_ends_every_rank_quickly(tiny_folder, tmp_path, launcher):
    script = tmp_path / "failing.py"
    script.write_text(SCRIPT)
    args = ["pretrain", "--data", str(tiny_folder), "--method", "simclr_failing_on_rank1", "--out", str(tmp_path / "run"),
            "data.image_size=16", "method.proj_hidden_dim=32", "method.proj_dim=16", "train.batch_size=8",
            "train.epochs=3", "train.progress=false", "train.monitor=none", "train.precision=fp32"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "UNVEIL_CACHE": str(tmp_path / "cache")}
    start = time.monotonic()
    if launcher == "torchrun":
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                               str(script), *args], env=env, capture_output=True, text=True, timeout=240)
        outputs, codes = [proc.stderr], [proc.returncode]
    else:  # two bare processes on gloo, no launcher to kill the survivor
        port = _free_port()
        procs = [subprocess.Popen([sys.executable, str(script), *args], stderr=subprocess.PIPE, text=True,
                                  env={**env, "RANK": str(r), "WORLD_SIZE": "2", "LOCAL_RANK": str(r),
                                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}) for r in range(2)]
        outputs = [p.communicate(timeout=240)[1] for p in procs]
        codes = [p.returncode for p in procs]
    elapsed = time.monotonic() - start
    everything = "\n".join(outputs)
    assert "unveil: error (rank 1): cannot read batch 2 on this node" in everything, everything[-3000:]
    assert all(code != 0 for code in codes), codes
    # torchrun prints its own summary of failed workers; no traceback comes from unveil's code
    frames = [line for line in everything.splitlines() if line.strip().startswith('File "')]
    assert not [f for f in frames if "src/unveil" in f or "failing.py" in f], everything[-3000:]
    if launcher == "plain":
        assert "rank 0 stopping because rank 1 failed: cannot read batch 2 on this node" in outputs[0], outputs[0][-2000:]
    # Start-up (imports, data, model) takes most of this; the failure itself ends both within seconds,
    # far from the 30-minute timeout of a rank left waiting at a collective.
    assert elapsed < 180, elapsed
