"""Deployment files: the Dockerfile lints clean, the systemd units verify."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SkipTest, SynchronousTestCase

ROOT = Path(__file__).resolve().parent.parent.parent


class DeploymentTests(SynchronousTestCase):
    def test_dockerfile_lints_clean(self):
        """hadolint (from the test extras) finds nothing in the Dockerfile."""
        hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
        result = subprocess.run([hadolint, str(ROOT / "Dockerfile")],
                                capture_output=True, text=True)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)

    def test_systemd_units_verify(self):
        """systemd-analyze verify accepts the service and socket units."""
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            if os.environ.get("CI"):
                self.fail("systemd-analyze is missing on the CI machine")
            raise SkipTest("systemd-analyze is not installed")
        folder = Path(self.mktemp())
        folder.mkdir()
        twistd = shutil.which("twistd") or str(Path(sys.executable).parent / "twistd")
        for name in ("alpaca-proxy.service", "alpaca-proxy.socket",
                     "alpaca-proxy-cluster.service"):
            text = (ROOT / "contrib" / "systemd" / name).read_text()
            # verify checks that ExecStart exists: point it at this machine's twistd.
            (folder / name).write_text(text.replace("/usr/local/bin/twistd", twistd))
        result = subprocess.run([analyze, "verify", str(folder / "alpaca-proxy.service"),
                                 str(folder / "alpaca-proxy.socket"),
                                 str(folder / "alpaca-proxy-cluster.service")],
                                capture_output=True, text=True)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertNotIn("alpaca-proxy", result.stderr)
