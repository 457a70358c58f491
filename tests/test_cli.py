"""argparse's own refusals are one line naming the problem and where the help is, like every UserError."""

from __future__ import annotations

import pytest

from unveil.cli import main


@pytest.mark.parametrize("argv, names", [
    (["compare", "--data", "x", "--stem", "big"], ["unveil compare", "--stem", "'big'", "standard"]),
    (["bench", "overlay", "--scale", "huge"], ["unveil bench", "--scale", "'huge'", "gpu"]),
    (["nope"], ["unveil:", "'nope'", "pretrain"]),
    (["eval", "linear"], ["unveil eval linear", "required", "run"]),
    (["pretrain", "--no-such-option"], ["unrecognized arguments", "--no-such-option"]),
])
def test_a_refused_command_line_is_one_line(argv, names, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "usage:" not in err, err
    for name in names:
        assert name in err, err
    assert "--help" in err
