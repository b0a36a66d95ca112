"""What our install.py costs at every webui start, against the common way of doing it.

The webui runs every extension's install.py at every start. The common way (many extensions, and
the Dreambooth extension our users know) is to hand pip the requirements each time and let it
find that everything is there. Ours reads installed metadata and only calls pip when something is
missing. Both are measured here, side by side, in the same venv where everything is installed.

    python bench/install_startup.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def requirements_file() -> Path:
    sys.path.insert(0, str(ROOT))
    from lib_dbchar.deps import load_policy  # noqa: PLC0415 - the bench needs the project on the path first

    policy = load_policy(ROOT / "pyproject.toml")
    lines = [str(r) for r in policy.requirements]
    handle = tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False)  # noqa: SIM115
    handle.write("\n".join(lines) + "\n")
    handle.close()
    return Path(handle.name)


def timed(cmd: list[str], repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(cmd, cwd=tempfile.gettempdir(), capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    reqs = requirements_file()
    ours = timed([sys.executable, str(ROOT / "install.py")], args.repeat)
    pip = timed([sys.executable, "-m", "pip", "install", "-r", str(reqs)], args.repeat)
    print(f"python {sys.version.split()[0]}, {args.repeat} runs each, everything already installed\n")
    print("| way | median s | min s | ratio to ours |")
    print("| --- | --- | --- | --- |")
    m_ours, m_pip = statistics.median(ours), statistics.median(pip)
    print(f"| dbchar install.py (metadata check, no pip) | {m_ours:.2f} | {min(ours):.2f} | 1.00 |")
    print(f"| pip install -r requirements (the common way) | {m_pip:.2f} | {min(pip):.2f} | {m_pip / m_ours:.1f}x |")


if __name__ == "__main__":
    main()
