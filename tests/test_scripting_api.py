"""The README's scripting example runs as documented and its numbers make sense."""

import runpy
from pathlib import Path


def test_scripting_example_runs(capsys):
    runpy.run_path(str(Path(__file__).parents[1] / "examples" / "scripting_api.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "loaded old-code checkpoint.tar epoch 7" in out
    cosines = [float(line.split()[-1]) for line in out.splitlines() if "cos(EP symmetric, BPTT)" in line]
    assert len(cosines) == 8 and min(cosines) > 0.9  # 4 projections + 2 dense layers (weight and bias)
