"""Drives the Gatehouse console in Debian's chromium through Playwright.

Started by tests/admin_console.rs, which runs the gateway and the `main` upstream and
passes their addresses in the environment. This script owns the `flaky` upstream (a
real HTTP server on the port the config names), so it can stop it and watch the
console report the target unhealthy. Nothing here downloads a browser: Playwright is
pointed at the system chromium. Exits non-zero, with the reason, on any failure.
"""

import http.server
import os
import pathlib
import subprocess
import sys
import threading
import urllib.error
import urllib.request

from playwright.sync_api import expect, sync_playwright

ADMIN = os.environ["GATEHOUSE_ADMIN"]
PROXY = os.environ["GATEHOUSE_PROXY"]
WRITE = os.environ["GATEHOUSE_WRITE_TOKEN"]
READ = os.environ["GATEHOUSE_READ_TOKEN"]
FLAKY_PORT = int(os.environ["GATEHOUSE_FLAKY_PORT"])
ARTIFACTS = pathlib.Path(os.environ["GATEHOUSE_ARTIFACTS"])
CHROMIUM = os.environ.get("GATEHOUSE_CHROMIUM", "/usr/bin/chromium")
WAIT = 15_000


class Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"flaky"
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        """Health checks read the status line and close: not an error worth a trace."""


def load(stop):
    """Traffic for the overview charts, through the proxy."""
    while not stop.is_set():
        try:
            urllib.request.urlopen(f"http://{PROXY}/", timeout=2).read()
        except Exception:
            pass


def login(page, token):
    page.goto(f"http://{ADMIN}/ui")
    page.get_by_label("Admin token").fill(token)
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#who")).to_contain_text("Signed in", timeout=WAIT)


def main():
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    flaky = Server(("127.0.0.1", FLAKY_PORT), Ok)
    threading.Thread(target=flaky.serve_forever, daemon=True).start()
    stop = threading.Event()
    threading.Thread(target=load, args=(stop,), daemon=True).start()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))

        # A wrong token is refused; a read-only token sees no edit controls.
        page.goto(f"http://{ADMIN}/ui")
        page.get_by_label("Admin token").fill("not-a-token")
        page.get_by_role("button", name="Log in").click()
        expect(page.locator("#login-error")).to_contain_text("not valid", timeout=WAIT)
        login(page, READ)
        page.get_by_role("link", name="Routes").click()
        expect(page.get_by_role("cell", name="root", exact=True)).to_be_visible(timeout=WAIT)
        assert page.get_by_text("New route").count() == 0, "a read-only token sees New route"
        assert page.get_by_role("link", name="Edit root").count() == 0, "a read-only token sees Edit"
        page.get_by_role("button", name="Log out").click()

        # The overview charts fill while the load runs.
        login(page, WRITE)
        page.get_by_role("link", name="Overview").click()
        rps = page.locator("#chart-rps")
        page.wait_for_function(
            "() => { const c = document.getElementById('chart-rps'); return c && Number(c.dataset.points) >= 2 && Number(c.dataset.latest) > 0; }",
            timeout=WAIT,
        )
        expect(page.locator("#per-route")).to_contain_text("root", timeout=WAIT)
        print("overview: requests/s", rps.get_attribute("data-latest"))
        page.screenshot(path=str(ARTIFACTS / "console-1280x800.png"), full_page=True)

        # An upstream's target goes unhealthy when its server stops.
        page.get_by_role("link", name="Upstreams").click()
        page.get_by_role("link", name="flaky", exact=True).click()
        target = page.locator(f'[data-target="127.0.0.1:{FLAKY_PORT}"]')
        expect(target).to_have_text("healthy", timeout=WAIT)
        flaky.shutdown()
        flaky.server_close()
        expect(target).to_have_text("unhealthy", timeout=WAIT)

        # A route made through the form serves, after the diff is shown.
        page.get_by_role("link", name="Routes").click()
        page.get_by_role("button", name="New route").click()
        page.get_by_label("Name").fill("from-console")
        page.get_by_label("Paths").fill("/console/")
        page.get_by_label("Upstream").fill("main")
        page.get_by_label("Strip the matched prefix").check()
        page.get_by_role("button", name="Check changes").click()
        expect(page.locator("#diff")).to_contain_text("+[routes.from-console]", timeout=WAIT)
        page.get_by_role("button", name="Save").click()
        expect(page.locator("#result")).to_contain_text("Saved route from-console", timeout=WAIT)
        out = subprocess.run(["curl", "-sS", "-m", "5", f"http://{PROXY}/console/hello"], capture_output=True, text=True)
        assert out.stdout == "main", f"curl through the new route: {out.stdout!r} {out.stderr!r}"

        # Deleted through its form (the confirmation accepted): gone from the config.
        page.on("dialog", lambda d: d.accept())
        page.get_by_role("link", name="Routes").click()
        page.get_by_role("link", name="Edit from-console").click()
        page.get_by_role("button", name="Delete").click()
        expect(page.locator("#result")).to_contain_text("Deleted route from-console", timeout=WAIT)
        req = urllib.request.Request(f"http://{ADMIN}/config/routes/from-console", headers={"authorization": f"Bearer {READ}"})
        try:
            urllib.request.urlopen(req, timeout=5)
            raise AssertionError("the deleted route is still in the config")
        except urllib.error.HTTPError as e:
            assert e.code == 404, f"GET of the deleted route: {e.code}"

        # An invalid form: the error appears next to the field it names.
        page.get_by_role("link", name="Routes").click()
        page.get_by_role("button", name="New route").click()
        page.get_by_label("Name").fill("broken")
        page.get_by_label("Paths").fill("/broken/")
        page.get_by_label("Upstream").fill("nowhere")
        page.get_by_role("button", name="Check changes").click()
        expect(page.locator("#err-upstream")).to_contain_text("`nowhere` is not defined", timeout=WAIT)
        expect(page.get_by_label("Upstream")).to_have_attribute("aria-invalid", "true")
        assert page.locator("#save").is_hidden(), "an invalid form offers Save"

        # Consumers with their plan and quota; the key never reaches the page.
        page.get_by_role("link", name="Consumers").click()
        expect(page.get_by_role("cell", name="gold", exact=True)).to_be_visible(timeout=WAIT)
        expect(page.get_by_role("cell", name="1000 per month")).to_be_visible(timeout=WAIT)
        assert "alice-console-key" not in page.content(), "the consumer's key is on the page"

        # The phone-sized layout: no horizontal scrolling of the page itself.
        page.set_viewport_size({"width": 390, "height": 844})
        page.get_by_role("link", name="Overview").click()
        expect(page.locator("#chart-rps")).to_be_visible(timeout=WAIT)
        width = page.evaluate("() => document.documentElement.scrollWidth")
        assert width <= 390, f"the page scrolls sideways at 390 px ({width} px wide)"
        page.screenshot(path=str(ARTIFACTS / "console-390x844.png"), full_page=True)

        # Keyboard: from the top of the page, Tab reaches the nav, and Enter follows a link.
        page.evaluate("() => document.activeElement && document.activeElement.blur()")
        reached = []
        for _ in range(4):
            page.keyboard.press("Tab")
            reached.append(page.evaluate("() => document.activeElement.textContent.trim()"))
            if reached[-1] == "Routes":
                break
        assert reached[-1] == "Routes", f"Tab went through {reached}"
        page.keyboard.press("Enter")
        expect(page.get_by_role("heading", name="Routes")).to_be_visible(timeout=WAIT)
        assert page.get_by_label("Admin token").is_hidden(), "the login form shows after login"
        assert not errors, f"script errors in the page: {errors}"
        browser.close()
    stop.set()
    print("console: ok")


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # the reason goes to the Rust test's failure message
        print(f"console test failed: {e!r}", file=sys.stderr)
        raise
