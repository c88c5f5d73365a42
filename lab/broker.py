"""A bootbroker broker deployed in the lab VM next to a helper, with real PAM, and curl as its client.

The broker runs as the unprivileged `brokersvc` (primary group bootbroker, so it may use the helper's
socket; supplementary group shadow, so pam_unix can check other users' passwords: see README, "PAM").
Lab users get real passwords in the VM's /etc/shadow (the VM's root is a tmpfs overlay: the host's
accounts are untouched). curl on the host reaches the broker through qemu's forwarding on 127.0.0.1,
over HTTPS, verifying the certificate the broker generated on its first start.

The broker's stdout and stderr go to the agent's log file for the spawned process (/tmp/lab-spawn-ID.log
in the VM); `log()` reads it, during the run and after `stop()`.
"""

from __future__ import annotations

import re
import secrets
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from broker.web.tls import ServerCertificate
from lab.deployment import Deployment, Grant, clear_lio, prepare_accounts
from lab.ipxe_build import ensure_ipxe, lab_certificate
from lab.vm import CLIENT_SIDE, GUEST_IP, GUEST_PORTS, Lab, LabCommandError, SpawnHandle

HOST_NAME = "boot.lab.example.org"
# The broker as the lab's workstations reach it over HTTPS (their qemu forwards CLIENT_SIDE's port to it):
# the URL their iPXE builds chain, and the names in the lab's certificate (curl on the host uses HOST_NAME).
HTTPS_URL = f"https://{CLIENT_SIDE}:{GUEST_PORTS['broker']}"
TLS_NAMES = (HOST_NAME, CLIENT_SIDE)
SERVICE_ACCOUNT = "brokersvc"  # made by lab.deployment.prepare_accounts, primary group bootbroker
STATE = "/var/lib/bootbroker"
PAM_FILE = Path(__file__).resolve().parents[1] / "scripts" / "pam.d" / "bootbroker"
LAB_USERS = ("student1", "student2")
START_TIMEOUT = 120.0
# curl's -w output after the body: "<mark><TLS handshake done> <total>", seconds since the start.
TIME_MARK = "\n@@curl-times "
SECRET_IN_SCRIPT = re.compile(r"^set password (\S+)$", re.MULTILINE)
TOKEN_IN_LINK = re.compile(r"[?&]token=([^\s&]+)")


@dataclass(frozen=True)
class Answer:
    """One HTTP answer as curl saw it; seconds and tls_seconds are curl's time_total and time_appconnect."""

    status: int
    headers: dict[str, str]
    body: str
    seconds: float
    tls_seconds: float


class BrokerDeployment:
    """`bootbroker serve` in the VM for the helper `helper` (which must already run), and its client."""

    def __init__(self, helper: Deployment, *, failure_delay: float = 0.5, insecure_http: bool = False,
                 url: str | None = None, connections_per_address: int = 256,
                 tls: LabTls | None = None) -> None:
        self.helper = helper
        self.lab: Lab = helper.lab
        self.insecure_http = insecure_http
        self.failure_delay = failure_delay
        # Every client of the lab reaches the VM from qemu's 10.0.2.2: one address for a whole class.
        self.connections_per_address = connections_per_address
        self.config = helper.config.replace(".toml", "-broker.toml")
        self.certificate = f"{STATE}/tls/broker.crt"
        self.key = f"{STATE}/tls/broker.key"
        # the certificate and key to install, and the iPXE that trusts them (lab_tls()); None: the broker
        # generates a new pair on its start
        self.tls = tls
        self.passwords: dict[str, str] = {}  # lab user -> the password set in the VM
        # Every password, token and CHAP secret this client sent or was given: none may reach a log.
        self.secrets: set[str] = set()
        self.process: SpawnHandle | None = None
        self._spawned: SpawnHandle | None = None  # kept after stop(), for log()
        self._final_log: str | None = None
        guest_port = GUEST_PORTS["http" if insecure_http else "broker"]
        # the broker's URL as workstations see it (a client VM sees other addresses than the host's curl)
        self.url = url or (f"http://{GUEST_IP}:{guest_port}" if insecure_http else f"https://{HOST_NAME}:{guest_port}")
        self._listen = f"0.0.0.0:{guest_port}"

    @property
    def cafile(self) -> Path:
        """The broker's certificate as copied out of the VM (in the lab's work dir, removed with it)."""
        return self.lab.work_dir / "broker-ca.pem"

    def config_text(self) -> str:
        return self.helper.config_text() + f"""
[broker]
url = "{self.url}"
names = ["{HOST_NAME}"]
listen = ["{self._listen}"]
certificate = "{self.certificate}"
key = "{self.key}"
pam_service = "bootbroker"
insecure_http = {str(self.insecure_http).lower()}
connections_per_address = {self.connections_per_address}

[broker.limits]
failure_delay = {self.failure_delay}
user_failures = 5
"""

    def install(self, users: tuple[str, ...] = LAB_USERS) -> None:
        """PAM service, lab users with random passwords, the service account's groups, state dir, config."""
        pam = PAM_FILE.read_text()  # the PAM service file sites install
        self.lab.run(["tee", "/etc/pam.d/bootbroker"], stdin=pam)
        self.lab.run(["usermod", "-aG", "shadow", SERVICE_ACCOUNT])
        for user in users:
            self.add_user(user)
        self.lab.run(["install", "-d", "-o", SERVICE_ACCOUNT, "-g", "bootbroker", "-m", "0750", STATE])
        self.install_tls(self.tls)
        self.lab.run(["tee", self.config], stdin=self.config_text())

    def install_tls(self, tls: LabTls | None) -> None:
        """Give the broker this certificate and key (as a site copies in its own), or, with None, none: its
        next start generates a new pair."""
        self.lab.run(["rm", "-rf", f"{STATE}/tls"])
        self.tls = tls
        if tls is None:
            return
        self.lab.run(["install", "-d", "-o", SERVICE_ACCOUNT, "-m", "0700", f"{STATE}/tls"])
        pair = ((tls.certificate.certificate, self.certificate, "0644"), (tls.certificate.key, self.key, "0600"))
        for source, installed, mode in pair:
            self.lab.run(["install", "-o", SERVICE_ACCOUNT, "-m", mode, "/dev/null", installed])
            self.lab.run(["tee", installed], stdin=source.read_text())

    def add_user(self, user: str) -> str:
        """A lab account (made if missing) with a new random password; returns the password."""
        if self.lab.run(["id", user], check=False).rc != 0:
            self.lab.run(["useradd", "-M", "-U", user])
        password = "pw-" + secrets.token_urlsafe(12)
        self.set_password(user, password)
        return password

    def add_users(self, users: list[str]) -> None:
        """Many lab accounts at once (two commands in the VM, whatever their number), as add_user."""
        missing = " ".join(users)
        self.lab.run(["sh", "-c", f"for u in {missing}; do id $u >/dev/null 2>&1 || useradd -M -U $u; done"])
        passwords = {user: "pw-" + secrets.token_urlsafe(12) for user in users}
        self.lab.run(["chpasswd"], stdin="".join(f"{u}:{p}\n" for u, p in passwords.items()))
        self.passwords.update(passwords)
        self.secrets.update(passwords.values())

    def set_password(self, user: str, password: str) -> None:
        # chpasswd reads the pair on stdin (the agent passes it through its socket): never on a command line.
        self.lab.run(["chpasswd"], stdin=f"{user}:{password}\n")
        self.passwords[user] = password
        self.secrets.add(password)

    def start(self) -> None:
        """Start `serve` as the service account and wait until GET /health answers 200 through the forward."""
        argv = [str(self.lab.python), "-m", "broker.cli", "--config", self.config, "serve"]
        self.process = self._spawned = self.lab.spawn(argv, user=SERVICE_ACCOUNT, cwd=str(self.lab.repo))
        self._final_log = None
        self.cafile.unlink(missing_ok=True)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            status = self.lab.wait(self.process, timeout=1)
            if status.rc is not None:
                self.process = None
                self._final_log = status.output
                raise AssertionError(f"broker exited {status.rc}:\n{status.output}")
            if not self.insecure_http and not self.cafile.exists() and not self._fetch_certificate():
                continue
            done = self._run_curl(["--max-time", "10"], "/health")
            if done.returncode != 0:
                continue  # not listening yet: qemu accepts for the guest, then drops the connection
            health = self._answer(done.stdout)
            if health.status != 200:
                raise AssertionError(f"GET /health answered {health.status}: {health.body}\n{self.log()}")
            return
        raise AssertionError(f"GET /health did not answer within {START_TIMEOUT:.0f} s:\n{self.log()}")

    def _fetch_certificate(self) -> bool:
        """Copy the certificate out once the broker has written it (atomically, so whole or absent)."""
        done = self.lab.run(["cat", self.certificate], check=False)
        if done.rc != 0 or "-----END CERTIFICATE-----" not in done.stdout:
            return False
        self.cafile.write_text(done.stdout)
        return True

    def stop(self) -> str:
        """SIGTERM, and check the broker shut down cleanly; returns its whole log."""
        assert self.process is not None
        self.lab.signal(self.process, signal.SIGTERM)
        status = self.lab.wait(self.process, timeout=30)
        self.process = None
        self._final_log = status.output
        if status.rc != 0:
            raise AssertionError(f"broker exited {status.rc} on SIGTERM:\n{status.output}")
        return status.output

    def log(self) -> str:
        """Everything the broker wrote to stdout and stderr so far."""
        if self._final_log is not None:
            return self._final_log
        assert self._spawned is not None, "the broker was never started"
        return self.lab.wait(self._spawned, timeout=0).output

    # the client side, on the host

    def host_url(self, url_or_path: str) -> str:
        """A URL from a script (under the broker's URL, with the VM-side port) or a path, as the host reaches it."""
        path = url_or_path.removeprefix(self.url)
        if not path.startswith("/"):
            raise ValueError(f"{url_or_path!r} is not under {self.url}")
        if self.insecure_http:
            return f"http://127.0.0.1:{self.lab.http_port}{path}"
        return f"https://{HOST_NAME}:{self.lab.broker_port}{path}"

    def _run_curl(self, options: list[str], url_or_path: str, config: str | None = None) -> subprocess.CompletedProcess[bytes]:
        argv = ["curl", "-sS", "-D", "-", "-w", f"{TIME_MARK}%{{time_appconnect}} %{{time_total}}"]
        if not self.insecure_http:
            argv += ["--cacert", str(self.cafile), "--resolve", f"{HOST_NAME}:{self.lab.broker_port}:127.0.0.1"]
        if config is not None:
            argv += ["--config", "-"]
        # bytes, not text: text mode would turn the header block's CRLFs into plain newlines
        return subprocess.run(
            [*argv, *options, self.host_url(url_or_path)],
            input=config.encode() if config is not None else None, capture_output=True, timeout=150, check=False,
        )

    @staticmethod
    def _answer(stdout: bytes) -> Answer:
        answer, _, times = stdout.decode().rpartition(TIME_MARK)
        head, _, body = answer.partition("\r\n\r\n")
        lines = head.split("\r\n")
        headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
        tls_seconds, seconds = (float(t) for t in times.split())
        return Answer(int(lines[0].split()[1]), headers, body, seconds, tls_seconds)

    def curl(self, url_or_path: str, *options: str, config: str | None = None) -> Answer:
        """One request; `config` is curl configuration read from stdin (credentials: never on argv)."""
        done = self._run_curl(["--max-time", "120", *options], url_or_path, config)
        if done.returncode != 0:
            raise AssertionError(f"curl failed ({done.returncode}): {done.stderr.decode(errors='replace')}")
        answer = self._answer(done.stdout)
        self.secrets.update(TOKEN_IN_LINK.findall(answer.body))
        self.secrets.update(SECRET_IN_SCRIPT.findall(answer.body))
        return answer

    def login(self, user: str, password: str | None = None) -> Answer:
        """GET /login.ipxe with HTTP Basic credentials (from a curl config on stdin, not argv)."""
        password = self.passwords[user] if password is None else password
        self.secrets.add(password)
        return self.curl("/login.ipxe", "--basic", config=f"user = {_quoted(f'{user}:{password}')}\n")

    def login_form(self, user: str, password: str | None = None) -> Answer:
        """POST /login.ipxe with a form, as iPXE builds with `params` send it."""
        password = self.passwords[user] if password is None else password
        self.secrets.add(password)
        return self.curl("/login.ipxe", config=(
            f"data-urlencode = {_quoted(f'username={user}')}\n"
            f"data-urlencode = {_quoted(f'password={password}')}\n"
        ))

    def boot(self, menu: str, image: str = "demo") -> Answer:
        """Follow the menu's boot link for `image`."""
        link = re.search(rf"\S+/boot/{image}\.ipxe\?token=\S+", menu)
        if link is None:
            raise AssertionError(f"no boot link for {image} in the menu:\n{menu}")
        return self.curl(link[0])


@dataclass(frozen=True)
class LabTls:
    """A broker certificate of the lab's and the site's iPXE for it: undionly.kpxe and ipxe.efi in `ipxe`,
    which chain HTTPS_URL and trust that certificate only."""

    certificate: ServerCertificate
    ipxe: Path


def lab_tls(name: str = "broker", key_type: str = "rsa") -> LabTls:
    """The lab's broker certificate `name` (kept in the lab cache; a `key_type` key when it is made) and
    its iPXE (built by ipxe/build.py the first time, then cached)."""
    certificate = lab_certificate(name, TLS_NAMES, key_type)
    return LabTls(certificate, ensure_ipxe(HTTPS_URL, certificate.certificate))


@contextmanager
def running(lab: Lab, store: str, *, advertise: str = "10.0.2.15:3260", portal: str = "0.0.0.0:3260",
            more_images: str = "", publish: Callable[[Deployment], object] | None = None,
            **options: Any) -> Iterator[BrokerDeployment]:
    """A helper (reflink on `store`, LIO on `portal`, advertising `advertise`, with `more_images` configured
    after the lab's own) and a broker for it (`options`: see BrokerDeployment) in the lab VM; `publish` puts
    images in the store first. Both stop, and LIO is cleared, at the end."""
    prepare_accounts(lab)
    clear_lio(lab)
    helper = Deployment(lab, "reflink", store, advertise=advertise, portal=portal)
    helper.more_images = more_images
    helper.install()
    helper.start()
    try:
        if publish is not None:
            try:
                publish(helper)
            except LabCommandError as e:  # the CLI says only "see the helper's log"
                raise AssertionError(f"{e}\nthe helper's log:\n{helper.log()[-6000:]}") from e
        broker = BrokerDeployment(helper, **options)
        broker.install()
        broker.start()
        try:
            yield broker
        finally:
            if broker.process is not None:
                broker.stop()
    finally:
        helper.stop()
        clear_lio(lab)


def _quoted(value: str) -> str:
    """A curl config file value: double quotes, with backslash and quote escaped."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


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
