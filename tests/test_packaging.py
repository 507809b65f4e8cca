"""A wheel install (not the editable checkout) finds the shipped pipeline.yaml and device profiles."""
from __future__ import annotations

import site
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_install_ships_pipeline_yaml_and_devices(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                            str(wheels), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-2000:]
    env_dir = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True, timeout=120)
    py = env_dir / "bin" / "python"
    target = subprocess.run([str(py), "-c", "import site; print(site.getsitepackages()[0])"], capture_output=True,
                            text=True, check=True).stdout.strip()
    Path(target, "deps.pth").write_text(site.getsitepackages()[0] + "\n")  # torch etc. from this environment
    (wheel,) = wheels.glob("smpq_deploy-*.whl")
    # --ignore-installed: without it pip uninstalls the editable checkout from the running venv first
    install = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--ignore-installed",
                              "--prefix", str(env_dir), str(wheel)], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-2000:]
    probe = ("import deploy.pipeline.config as c, deploy.devices.profiles as d; print(c.DEFAULT_CONFIG); print(d.devices_dir()); "
             "print(len(d.list_devices()))")
    out = subprocess.run([str(py), "-c", probe], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    config, devices, count = out.stdout.split()
    assert Path(config) == env_dir / "share" / "smpq-deploy" / "pipeline.yaml" and Path(config).is_file()
    assert Path(devices) == env_dir / "share" / "smpq-deploy" / "devices"
    assert int(count) == len(list((ROOT / "devices").glob("*.yaml")))
