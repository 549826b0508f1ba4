#!/usr/bin/env python3
"""Drives one page in headless Chromium for a Rust test (ops/tests/control_room.rs).

Standard library only: it speaks the Chrome DevTools Protocol over --remote-debugging-pipe
(NUL-separated JSON on file descriptors 3 and 4), so neither a websocket client nor a
browser download is needed; Debian's `chromium` is enough.

    browser.py URL [--chromium PATH] [--width 1280 --height 900]

Then one JSON command per line on stdin, one JSON answer per line on stdout:
    {"eval": "<JavaScript expression>"}        -> {"value": <its value, by value>}
    {"screenshot": "path.png", "width": 390}   -> {"saved": "path.png"}  (width: optional viewport)
End of stdin closes the browser.
"""
import argparse
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time


class Browser:
    def __init__(self, chromium, width, height):
        self.profile = tempfile.mkdtemp(prefix="orderpipe-chromium-")
        to_child_r, self.to_child = os.pipe()
        self.from_child, from_child_w = os.pipe()

        def fds():
            # The pipe ends become the child's fds 3 (commands) and 4 (answers). Duplicated
            # high first: an end may already be 3 or 4, and dup2 onto itself keeps CLOEXEC.
            high_r, high_w = os.dup(to_child_r), os.dup(from_child_w)
            os.dup2(high_r, 3)
            os.dup2(high_w, 4)

        self.log = open(os.path.join(self.profile, "chromium.log"), "wb")
        self.child = subprocess.Popen(
            [
                chromium,
                "--headless",
                "--remote-debugging-pipe",
                # Root in CI containers: Chromium refuses its sandbox as root.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--hide-scrollbars",
                f"--user-data-dir={self.profile}",
                f"--window-size={width},{height}",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=self.log,
            preexec_fn=fds,
            close_fds=False,
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self.next_id = 0
        self.buffer = b""
        self.session = None

    def _read_message(self):
        while b"\0" not in self.buffer:
            chunk = os.read(self.from_child, 1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self.buffer += chunk
        raw, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method, params=None, session=True):
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session and self.session:
            message["sessionId"] = self.session
        os.write(self.to_child, json.dumps(message).encode() + b"\0")
        while True:
            answer = self._read_message()
            if answer.get("id") == self.next_id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer["result"]

    def open(self, url):
        target = self.call("Target.createTarget", {"url": "about:blank"}, session=False)
        attached = self.call(
            "Target.attachToTarget",
            {"targetId": target["targetId"], "flatten": True},
            session=False,
        )
        self.session = attached["sessionId"]
        self.call("Page.enable")
        self.call("Page.navigate", {"url": url})
        # Navigation answers before the document exists: wait for it, or the first command
        # would run in about:blank.
        deadline = time.monotonic() + 15
        while self.eval("location.href") == "about:blank" or self.eval("document.readyState") != "complete":
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not load within 15 s")
            time.sleep(0.05)

    def eval(self, expression):
        result = self.call(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
        )
        if "exceptionDetails" in result:
            raise RuntimeError(json.dumps(result["exceptionDetails"]))
        return result["result"].get("value")

    def screenshot(self, path, width=None, height=None):
        if width:
            # A phone-sized viewport (the page's responsive layout), then back.
            self.call(
                "Emulation.setDeviceMetricsOverride",
                {"width": width, "height": height or 844, "deviceScaleFactor": 2, "mobile": True},
            )
            # Let the page re-lay out and repaint at the new size.
            self.eval("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
        shot = self.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
        if width:
            self.call("Emulation.clearDeviceMetricsOverride")
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "wb") as f:
            f.write(base64.b64decode(shot["data"]))
        return path

    def close(self):
        try:
            self.call("Browser.close", session=False)
            self.child.wait(timeout=10)
        except Exception:
            self.child.kill()
            self.child.wait()
        shutil.rmtree(self.profile, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=900)
    args = parser.parse_args()
    browser = Browser(args.chromium, args.width, args.height)
    try:
        browser.open(args.url)
        print(json.dumps({"ready": True}), flush=True)
        for line in sys.stdin:
            command = json.loads(line)
            try:
                if "eval" in command:
                    answer = {"value": browser.eval(command["eval"])}
                elif "screenshot" in command:
                    answer = {
                        "saved": browser.screenshot(
                            command["screenshot"], command.get("width"), command.get("height")
                        )
                    }
                else:
                    answer = {"error": f"unknown command {command}"}
            except RuntimeError as err:
                answer = {"error": str(err)}
            print(json.dumps(answer), flush=True)
    finally:
        browser.close()


if __name__ == "__main__":
    main()
