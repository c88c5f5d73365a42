"""A bootbroker broker deployed in the lab VM next to a helper, with real PAM, and curl as its client.

The broker runs as the unprivileged `brokersvc` (group bootbroker, so it may use the helper's socket; and
group shadow, so pam_unix can check other users' passwords: see README, "PAM"). Lab users get real
passwords in the VM's /etc/shadow. curl on the host reaches the broker through qemu's forwarding on
127.0.0.1, over HTTPS with the certificate the broker generated on its first start.
"""

from __future__ import annotations

import re
import secrets
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from lab.deployment import Deployment, Grant
from lab.vm import GUEST_PORTS, Lab, SpawnHandle

HOST_NAME = "boot.lab.example.org"
SERVICE_ACCOUNT = "brokersvc"
PAM_SERVICE = Path(__file__).resolve().parents[1] / "scripts" / "pam.d" / "bootbroker"
TIME_MARK = "\n@@time_total "
MINIMAL_PAM = "auth required pam_unix.so\naccount required pam_unix.so\n"


@dataclass
class Answer:
    """One HTTP answer as curl saw it."""

    status: int
    headers: dict[str, str]
    body: str
    seconds: float


class BrokerDeployment:
    """`bootbroker serve` in the VM, for the helper `helper` and its configuration."""

    def __init__(self, helper: Deployment, *, failure_delay: float = 0.3, insecure_http: bool = False) -> None:
        self.helper = helper
        self.lab: Lab = helper.lab
        self.insecure_http = insecure_http
        self.failure_delay = failure_delay
        self.config = helper.config.replace(".toml", "-broker.toml")
        self.state = "/var/lib/bootbroker"
        self.passwords: dict[str, str] = {}
        self.process: SpawnHandle | None = None
        self._cacert: Path | None = None
        guest = GUEST_PORTS["http" if insecure_http else "broker"]
        self.url = f"http://10.0.2.15:{guest}" if insecure_http else f"https://{HOST_NAME}:{guest}"
        self._listen = f"0.0.0.0:{guest}"

    def config_text(self) -> str:
        return self.helper.config_text() + f"""
[broker]
url = "{self.url}"
listen = ["{self._listen}"]
certificate = "{self.state}/tls/broker.crt"
key = "{self.state}/tls/broker.key"
pam_service = "bootbroker"
insecure_http = {str(self.insecure_http).lower()}

[broker.limits]
failure_delay = {self.failure_delay}
user_failures = 5
"""

    def install(self, users: tuple[str, ...] = ("student1", "student2")) -> None:
        pam = PAM_SERVICE.read_text() if PAM_SERVICE.exists() else MINIMAL_PAM
        self.lab.run(["tee", "/etc/pam.d/bootbroker"], stdin=pam)
        self.lab.run(["usermod", "-aG", "shadow", SERVICE_ACCOUNT])
        for user in users:
            if self.lab.run(["id", user], check=False).rc != 0:
                self.lab.run(["useradd", "-M", "-U", user])
            self.set_password(user, "pw-" + secrets.token_urlsafe(12))
        self.lab.run(["install", "-d", "-o", SERVICE_ACCOUNT, "-g", "bootbroker", "-m", "0750", self.state])
        self.lab.run(["rm", "-rf", f"{self.state}/tls"])
        self.lab.run(["tee", self.config], stdin=self.config_text())

    def set_password(self, user: str, password: str) -> None:
        # chpasswd reads the pair on stdin: the password never appears on a command line.
        self.lab.run(["chpasswd"], stdin=f"{user}:{password}\n")
        self.passwords[user] = password

    def start(self) -> None:
        argv = [str(self.lab.python), "-m", "broker.cli", "--config", self.config, "serve"]
        self.process = self.lab.spawn(argv, user=SERVICE_ACCOUNT, cwd=str(self.lab.repo))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            status = self.lab.wait(self.process, timeout=1)
            if status.rc is not None:
                raise AssertionError(f"broker exited {status.rc}:\n{status.output}")
            if "broker ready" in status.output:
                return
        raise AssertionError(f"broker not ready within 120 s:\n{self.log()}")

    def stop(self) -> str:
        assert self.process is not None
        self.lab.signal(self.process, signal.SIGTERM)
        status = self.lab.wait(self.process, timeout=30)
        self.process = None
        if status.rc != 0:
            raise AssertionError(f"broker exited {status.rc} on SIGTERM:\n{status.output}")
        return status.output

    def log(self) -> str:
        assert self.process is not None
        return self.lab.wait(self.process, timeout=0).output

    # the client side, on the host

    def _cafile(self) -> Path:
        if self._cacert is None:
            pem = self.lab.run(["cat", f"{self.state}/tls/broker.crt"]).stdout
            handle = tempfile.NamedTemporaryFile("w", prefix="bootbroker-ca-", suffix=".pem", delete=False)
            with handle:
                handle.write(pem)
            self._cacert = Path(handle.name)
        return self._cacert

    def host_url(self, url_or_path: str) -> str:
        """A URL from a script (under the broker's URL) or a path, as the host reaches it."""
        path = url_or_path.removeprefix(self.url)
        if not path.startswith("/"):
            raise ValueError(f"{url_or_path!r} is not under {self.url}")
        if self.insecure_http:
            return f"http://127.0.0.1:{self.lab.http_port}{path}"
        return f"https://{HOST_NAME}:{self.lab.broker_port}{path}"

    def curl(self, url_or_path: str, *options: str, config: str | None = None) -> Answer:
        """One request; `config` is curl configuration read from stdin (for credentials: not on argv)."""
        argv = ["curl", "-sS", "--max-time", "120", "-D", "-", "-w", f"{TIME_MARK}%{{time_total}}"]
        if not self.insecure_http:
            argv += ["--cacert", str(self._cafile()), "--resolve", f"{HOST_NAME}:{self.lab.broker_port}:127.0.0.1"]
        if config is not None:
            argv += ["--config", "-"]
        # bytes, not text: text mode would turn the header block's CRLFs into plain newlines
        done = subprocess.run([*argv, *options, self.host_url(url_or_path)],
                              input=config.encode() if config else None, capture_output=True, timeout=150, check=False)
        if done.returncode != 0:
            raise AssertionError(f"curl failed ({done.returncode}): {done.stderr.decode(errors='replace')}")
        answer, _, seconds = done.stdout.decode().rpartition(TIME_MARK)
        head, _, body = answer.partition("\r\n\r\n")
        lines = head.split("\r\n")
        headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
        return Answer(int(lines[0].split()[1]), headers, body, float(seconds))

    def login(self, user: str, password: str | None = None) -> Answer:
        """GET /login.ipxe with HTTP Basic credentials from a curl config on stdin, not argv."""
        secret = self.passwords[user] if password is None else password
        return self.curl("/login.ipxe", "--basic", config=f'user = "{user}:{secret}"\n')

    def login_form(self, user: str, password: str) -> Answer:
        """POST /login.ipxe with a form, as iPXE builds with `params` send it."""
        return self.curl("/login.ipxe", config=f'data-urlencode = "username={user}"\ndata-urlencode = "password={password}"\n')

    def boot(self, menu: str, image: str = "demo") -> Answer:
        link = re.search(rf"chain --replace --autofree (\S+/boot/{image}\.ipxe\?token=\S+)", menu)
        if link is None:
            raise AssertionError(f"no boot link for {image} in the menu:\n{menu}")
        return self.curl(link[1])


def grant_from_script(script: str) -> Grant:
    """The iSCSI session a sanboot script describes, as the lab's iSCSI clients take it."""
    def setting(name: str) -> str:
        found = re.search(rf"^set {name} (\S+)$", script, re.MULTILINE)
        if found is None:
            raise AssertionError(f"the script sets no {name}:\n{script}")
        return found[1]

    uri = re.search(r"^sanboot iscsi:([^:]+)::(\d+):(\d+):(\S+) ", script, re.MULTILINE)
    if uri is None:
        raise AssertionError(f"the script has no sanboot iscsi: line:\n{script}")
    return Grant(
        target_iqn=uri[4], lun=int(uri[3]), portals=[f"{uri[1]}:{uri[2]}"], initiator_iqn=setting("initiator-iqn"),
        chap_user=setting("username"), chap_secret=setting("password"),
    )
