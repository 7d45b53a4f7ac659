"""scripts/demo's last step (scripts/demo.py, after `spin build`): one rotation, then the
status page's URL; with --keep the app goes on serving it until Ctrl-C."""

import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

from spin import ROOT

DEMO = ROOT / "scripts" / "demo.py"


def answers(url, token=None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as answer:
            return answer.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return None


def test_demo_keep_serves_the_status_page_until_interrupted(tmp_path):
    log = tmp_path / "demo.out"
    with open(log, "w") as out:
        demo = subprocess.Popen([sys.executable, str(DEMO), "--keep"], stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            deadline = time.monotonic() + 240
            found = None
            while found is None:
                assert demo.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                found = re.search(r"^status page: (http://127\.0\.0\.1:\d+)/  \(token (\S+);", log.read_text(), re.M)
                time.sleep(0.2)
            url, token = found.groups()
            assert "example-team/divx-lab: fresh" in log.read_text()
            assert answers(url + "/") == 200
            assert answers(url + "/status") == 401
            assert answers(url + "/status", token) == 200
            time.sleep(1)
            assert demo.poll() is None, "still running with --keep"
        finally:
            demo.send_signal(signal.SIGINT)
            demo.wait(timeout=60)
    assert demo.returncode == 0, log.read_text()
    assert answers(url + "/") is None, "stopped on Ctrl-C"


def test_demo_prints_the_status_page_and_stops_without_keep():
    done = subprocess.run([sys.executable, str(DEMO)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    [url] = re.findall(r"^status page: (http://127\.0\.0\.1:\d+)/  \(token ", done.stdout, re.M)
    assert "scripts/demo --keep leaves the app running" in done.stdout
    assert answers(url + "/") is None, "stopped"
    wrong = subprocess.run([sys.executable, str(DEMO), "--nope"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert wrong.returncode == 2 and "usage: scripts/demo [--keep]" in wrong.stderr
