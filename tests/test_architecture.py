"""The architecture holds: the import contracts of ``pyproject.toml`` (layers that point downwards, Lightning only
under ``ssl_bench.train``, a study side without torch), and the study commands start without torch or Lightning."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO


def test_import_contracts_are_kept():
    proc = subprocess.run(["lint-imports", "--no-logo", "--no-cache"], cwd=REPO, capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:]


def test_report_and_dashboard_load_neither_torch_nor_lightning(tmp_path):
    """``ssl-bench report`` and ``dashboard`` run end to end on an empty folder (a one-line error) without importing
    torch or Lightning: the study side reads run directories only."""
    code = (
        "import sys\n"
        "from ssl_bench.cli import main\n"
        f"for argv in (['report', {str(tmp_path)!r}], ['dashboard', {str(tmp_path)!r}, '--dry-run']):\n"
        "    main(argv)\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'lightning', 'torchvision'))\n"
        "print(heavy)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]", proc.stdout
    assert "ssl-bench: error:" in proc.stderr  # both refused the empty folder, having loaded their modules
