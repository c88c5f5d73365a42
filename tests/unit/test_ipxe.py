"""ipxe/: the embedded script and the build helper, with a real `make` on a stand-in iPXE source tree."""

from __future__ import annotations

import importlib.util
import re
import subprocess
from pathlib import Path
from types import ModuleType

import pytest

from broker.web.tls import ensure_certificate

BUILD = Path(__file__).parents[2] / "ipxe" / "build.py"
URL = "https://boot.example.org"

# A stand-in for iPXE's src/Makefile: each target keeps what it was given (the EMBED=/TRUST= files live in a
# temporary directory that is gone after the build) and where it ran, then writes a small binary.
MAKEFILE = """\
bin/undionly.kpxe:
\tmkdir -p bin && pwd > bin/cwd
\techo '$(EMBED)' > bin/embed-path && cp '$(EMBED)' bin/embedded.ipxe
\techo '$(TRUST)' > bin/trust-path && cp '$(TRUST)' bin/trusted.crt
\techo bios > $@

bin-x86_64-efi/ipxe.efi:
\tmkdir -p bin-x86_64-efi
\tcp '$(EMBED)' bin-x86_64-efi/embedded.ipxe && cp '$(TRUST)' bin-x86_64-efi/trusted.crt
\techo uefi > $@
"""

# What Debian 12's 2019 iPXE can run; `inc` came later.
OLD_IPXE_COMMANDS = {"dhcp", "chain", "echo", "sleep", "goto", "iseq", "isset", "set", "exit"}


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ipxe_build", BUILD)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = load()


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    source = tmp_path / "ipxe"
    (source / "src" / "config").mkdir(parents=True)
    (source / "src" / "Makefile").write_text(MAKEFILE)
    (source / "src" / "config" / "general.h").write_text("#undef\tDOWNLOAD_PROTO_HTTPS\n")
    cert = ensure_certificate(tmp_path / "tls" / "broker.crt", tmp_path / "tls" / "broker.key", ["boot.example.org"])
    return source, cert.certificate


def argv(source: Path, cert: Path, out: Path, *more: str) -> list[str]:
    return ["--source", str(source), "--url", URL, "--trust", str(cert), "--output", str(out), *more]


def openssl_fingerprint(cert: Path) -> str:
    done = subprocess.run(["openssl", "x509", "-noout", "-fingerprint", "-sha256", "-in", str(cert)],
                          capture_output=True, text=True, check=True)
    return done.stdout.strip().split("=", 1)[1]


# --- the embedded script

def test_the_embedded_script_chains_the_broker() -> None:
    assert "@BROKER_URL@" in build.EMBED_TEMPLATE.read_text()
    script = build.render_embed(URL)
    assert script.startswith("#!ipxe\n# ")  # and says why it exists
    assert re.search(r"@\w+@", script) is None
    assert f"chain --replace --autofree {URL}/boot.ipxe ||" in script.splitlines()
    assert script.count(URL) == 3  # the chain and the two messages naming it


def test_the_embedded_script_uses_only_old_ipxe_commands_and_defined_labels() -> None:
    lines = [line.strip() for line in build.render_embed(URL).splitlines()[1:]]
    commands = [line for line in lines if line and not line.startswith(("#", ":"))]
    used = {part.split()[0] for line in commands for part in re.split(r"\|\||&&", line) if part.strip()}
    assert used <= OLD_IPXE_COMMANDS, used - OLD_IPXE_COMMANDS
    labels = {line[1:] for line in lines if line.startswith(":")}
    targets = set(re.findall(r"\bgoto (\S+)", "\n".join(commands)))
    assert targets and targets <= labels, targets - labels
    # every way out that is not the chain ends in `exit`: the firmware's next boot device, never a shell
    assert sum(line == "exit" for line in commands) == 2 and "shell" not in used
    # dhcp and chain failures are caught (an uncaught failure ends an iPXE script)
    assert all(line.endswith("||") for line in commands if line.startswith(("dhcp", "chain", "iseq")))


def test_render_embed_refuses_a_url_that_would_change_the_script() -> None:
    for url in (URL + "/x || shell", URL + "\nshell", "https://${password}@host"):
        with pytest.raises(ValueError):
            build.render_embed(url)


# --- the make command lines

def test_make_commands_are_argument_lists_per_target() -> None:
    embed, trust = Path("/tmp/w/bootbroker.ipxe"), Path("/tmp/w/broker.crt")
    assert build.make_commands(["bios", "uefi"], embed, trust, 4) == [
        ["make", "-j", "4", "bin/undionly.kpxe", "EMBED=/tmp/w/bootbroker.ipxe", "TRUST=/tmp/w/broker.crt"],
        ["make", "-j", "4", "bin-x86_64-efi/ipxe.efi", "EMBED=/tmp/w/bootbroker.ipxe", "TRUST=/tmp/w/broker.crt"],
    ]


def test_the_fingerprint_is_openssls(tree: tuple[Path, Path]) -> None:
    _, cert = tree
    assert build.fingerprint(cert.read_bytes()) == openssl_fingerprint(cert)


# --- builds with a real make

def test_a_build_embeds_the_script_trusts_the_certificate_and_enables_https(
    tree: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, cert = tree
    out = tmp_path / "out"
    assert build.main(argv(source, cert, out)) == 0
    src = source / "src"
    assert sorted(p.name for p in out.iterdir()) == ["ipxe.efi", "undionly.kpxe"]
    assert (out / "undionly.kpxe").read_text() == "bios\n" and (out / "ipxe.efi").read_text() == "uefi\n"
    assert (src / "bin" / "cwd").read_text().strip() == str(src.resolve())
    for built in (src / "bin", src / "bin-x86_64-efi"):
        assert (built / "embedded.ipxe").read_text() == build.render_embed(URL)
        assert (built / "trusted.crt").read_bytes() == cert.read_bytes()
    # the script and the certificate were given from a temporary directory, never from the source tree
    for recorded in ("embed-path", "trust-path"):
        path = Path((src / "bin" / recorded).read_text().strip())
        assert path.is_absolute() and not path.exists() and source not in path.parents
    local = src / "config" / "local" / "general.h"
    assert "\n#define DOWNLOAD_PROTO_HTTPS\n" in local.read_text()
    printed = capsys.readouterr().out
    assert f"wrote {local}" in printed
    assert "== building BIOS undionly.kpxe" in printed and "== building UEFI ipxe.efi" in printed
    assert openssl_fingerprint(cert) in printed and str(out / "undionly.kpxe") not in printed  # names, not paths
    assert f"done: in {out}" in printed and "undionly.kpxe" in printed and "ipxe.efi" in printed


def test_one_target_builds_only_that(tree: tuple[Path, Path], tmp_path: Path) -> None:
    source, cert = tree
    out = tmp_path / "out"
    assert build.main(argv(source, cert, out, "--target", "uefi")) == 0
    assert [p.name for p in out.iterdir()] == ["ipxe.efi"]
    assert not (source / "src" / "bin" / "undionly.kpxe").exists()


def test_the_empty_local_config_ipxes_own_make_leaves_is_filled_in(tree: tuple[Path, Path], tmp_path: Path) -> None:
    source, cert = tree
    local = source / "src" / "config" / "local" / "general.h"
    local.parent.mkdir(parents=True)
    local.write_text("")  # what `touch` in iPXE's Makefile.housekeeping leaves after any earlier build
    assert build.main(argv(source, cert, tmp_path / "out")) == 0
    assert "#define DOWNLOAD_PROTO_HTTPS" in local.read_text()


def test_an_admins_local_config_with_https_is_used_as_it_is(tree: tuple[Path, Path], tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    source, cert = tree
    local = source / "src" / "config" / "local" / "general.h"
    local.parent.mkdir(parents=True)
    local.write_text("#define IMAGE_PNG\n#define  DOWNLOAD_PROTO_HTTPS  /* ours */\n")
    assert build.main(argv(source, cert, tmp_path / "out")) == 0
    assert local.read_text() == "#define IMAGE_PNG\n#define  DOWNLOAD_PROTO_HTTPS  /* ours */\n"
    assert "already has" in capsys.readouterr().out


@pytest.mark.parametrize("content", [
    "#define IMAGE_PNG\n",
    "/* #define DOWNLOAD_PROTO_HTTPS */\n",
    "#define DOWNLOAD_PROTO_HTTPS\n#undef DOWNLOAD_PROTO_HTTPS\n",
])
def test_an_admins_local_config_without_https_is_refused_and_left_alone(
    tree: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str
) -> None:
    source, cert = tree
    local = source / "src" / "config" / "local" / "general.h"
    local.parent.mkdir(parents=True)
    local.write_text(content)
    assert build.main(argv(source, cert, tmp_path / "out")) == 2
    assert local.read_text() == content
    err = capsys.readouterr().err
    assert err.startswith("build.py: ") and "add the line '#define DOWNLOAD_PROTO_HTTPS'" in err
    assert not (source / "src" / "bin").exists()  # make never ran


@pytest.mark.parametrize("makefile, target, failed", [
    ("bin/undionly.kpxe:\n\tfalse\n", "all", "BIOS bin/undionly.kpxe"),
    (MAKEFILE.replace("\techo uefi > $@\n", "\texit 3\n"), "all", "UEFI bin-x86_64-efi/ipxe.efi"),
    ("bin/undionly.kpxe:\n\ttrue\n", "bios", "BIOS bin/undionly.kpxe (no "),  # "succeeded" without a binary
])
def test_a_failing_make_names_the_target(tree: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         makefile: str, target: str, failed: str) -> None:
    source, cert = tree
    (source / "src" / "Makefile").write_text(makefile)
    out = tmp_path / "out"
    assert build.main(argv(source, cert, out, "--target", target)) == 1
    err = capsys.readouterr().err
    assert f"make failed for {failed}" in err and "the full log is above" in err
    assert not (out / Path(failed.split()[1]).name).exists()


def test_a_replaced_certificate_reaches_the_next_build(tree: tuple[Path, Path], tmp_path: Path) -> None:
    # iPXE rebuilds rootcert.o only when the TRUST= path changes: each build must give a new one.
    source, cert = tree
    assert build.main(argv(source, cert, tmp_path / "out")) == 0
    first = (source / "src" / "bin" / "trust-path").read_text()
    (source / "src" / "bin" / "undionly.kpxe").unlink()
    assert build.main(argv(source, cert, tmp_path / "out", "--target", "bios")) == 0
    assert (source / "src" / "bin" / "trust-path").read_text() != first


# --- refusals

def tarball_of(source: Path, tarball: Path) -> Path:
    subprocess.run(["tar", "-cJf", str(tarball), "-C", str(source.parent), source.name], check=True)
    return tarball


def test_a_release_tarball_is_unpacked_once_into_work_and_rebuilt_there(
    tree: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, cert = tree
    tarball = tarball_of(source, tmp_path / "ipxe-2.0.0.tar.xz")
    work = tmp_path / "work"
    assert build.main(argv(tarball, cert, tmp_path / "out", "--work", str(work))) == 0
    printed = capsys.readouterr().out
    (unpacked,) = work.iterdir()
    tree_in_work = unpacked / "ipxe"
    assert f"unpacked into {tree_in_work}" in printed
    assert (tree_in_work / "src" / "bin" / "cwd").read_text().strip() == str(tree_in_work / "src")
    assert (tmp_path / "out" / "undionly.kpxe").read_text() == "bios\n"
    assert not (source / "src" / "bin").exists()  # the tarball's tree was built, not the tree it was made from
    # the next build finds the same tree (what make built there stays: a new certificate relinks)
    (tree_in_work / "src" / "bin" / "kept").write_text("")
    assert build.main(argv(tarball, cert, tmp_path / "out2", "--work", str(work), "--target", "bios")) == 0
    assert "unpacked before in" in capsys.readouterr().out
    assert [p.name for p in work.iterdir()] == [unpacked.name] and (tree_in_work / "src" / "bin" / "kept").exists()


def test_a_tarball_unpacks_into_the_users_cache_by_default(
    tree: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, cert = tree
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert build.main(argv(tarball_of(source, tmp_path / "ipxe.tar.gz"), cert, tmp_path / "out")) == 0
    (unpacked,) = (tmp_path / "cache" / "bootbroker" / "ipxe").iterdir()
    assert unpacked.name.startswith("ipxe-") and (unpacked / "ipxe" / "src" / "bin" / "undionly.kpxe").exists()


def test_a_tarball_that_is_not_one_tree_is_refused_and_leaves_nothing(
    tree: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, cert = tree
    loose = tmp_path / "loose"
    loose.mkdir()
    (loose / "a").write_text("")
    (loose / "b").write_text("")
    tarball = tmp_path / "loose.tar.xz"
    subprocess.run(["tar", "-cJf", str(tarball), "-C", str(loose), "a", "b"], check=True)
    broken = tmp_path / "broken.tar.xz"
    broken.write_bytes(b"not a tarball")
    work = tmp_path / "work"
    for bad, expected in ((tarball, "does not hold one top directory"), (broken, "tar could not unpack it")):
        assert build.main(argv(bad, cert, tmp_path / "out", "--work", str(work))) == 2
        assert expected in capsys.readouterr().err
        assert list(work.iterdir()) == []
    assert not (tmp_path / "out").exists()


def test_work_is_refused_with_a_source_tree(tree: tuple[Path, Path], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    source, cert = tree
    assert build.main(argv(source, cert, tmp_path / "out", "--work", str(tmp_path / "w"))) == 2
    assert "--work is for a tarball --source" in capsys.readouterr().err


@pytest.mark.parametrize("change, expected", [
    ({"--source": "/nonexistent"}, "does not exist; point it at a clone of https://github.com/ipxe/ipxe"),
    ({"--source": "EMPTY"}, "is not an iPXE source tree (no src/Makefile and no src/config/general.h)"),
    ({"--source": "SRC"}, "is iPXE's src/ directory"),
    ({"--url": "http://boot.example.org"}, "clear text"),
    ({"--url": "ftp://boot.example.org"}, "give https://HOST[:PORT]"),
    ({"--url": "boot.example.org"}, "give https://HOST[:PORT]"),
    ({"--url": "https://user:pw@boot.example.org"}, "carries user info"),
    ({"--url": "https://@boot.example.org"}, "carries user info"),
    ({"--url": "https://boot.example.org/"}, "trailing slash"),
    ({"--url": "https://boot.example.org/boot"}, "has a path"),
    ({"--url": "https://boot.example.org?x=1"}, "has a query"),
    ({"--url": "https://boot.example.org?"}, "has a query"),
    ({"--url": "https://boot.example.org#"}, "has a fragment"),
    ({"--url": "https://boot.example.org\nshell"}, "whitespace or control characters"),
    ({"--url": "https://boot example.org"}, "whitespace or control characters"),
    ({"--url": "https://boot.example.org:https"}, "no valid host"),
    ({"--url": "https://${host}"}, "no valid host"),
    ({"--url": "https://boot.example.org:70000"}, "port outside 1-65535"),
    ({"--trust": "KEY"}, "is not a PEM certificate (it does not start with -----BEGIN CERTIFICATE-----)"),
    ({"--trust": "BROKEN"}, "is not a PEM certificate: its body is not base64"),
    ({"--trust": "/nonexistent.pem"}, "cannot read it"),
    ({"--jobs": "0"}, "--jobs 0: give at least 1"),
])
def test_bad_arguments_are_refused_with_the_reason(
    tree: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], change: dict[str, str], expected: str
) -> None:
    source, cert = tree
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken.crt").write_text("-----BEGIN CERTIFICATE-----\nnot*base64\n-----END CERTIFICATE-----\n")
    (source / "src" / "Makefile.housekeeping").write_text("")
    named = {"EMPTY": tmp_path / "empty", "SRC": source / "src", "KEY": cert.with_suffix(".key"),
             "BROKEN": tmp_path / "broken.crt"}
    args = {"--source": str(source), "--url": URL, "--trust": str(cert), "--output": str(tmp_path / "out")}
    args.update({k: str(named.get(v, v)) for k, v in change.items()})
    assert build.main([item for pair in args.items() for item in pair]) == 2
    err = capsys.readouterr().err
    assert err.startswith("build.py: ") and err.count("\n") == 1  # one line
    assert expected in err
    assert not (source / "src" / "config" / "local").exists()  # nothing written on a refusal
    assert not (tmp_path / "out").exists()


def test_argparse_errors_are_an_exit_status_too(capsys: pytest.CaptureFixture[str]) -> None:
    assert build.main(["--url", URL]) == 2
    assert "--source" in capsys.readouterr().err


def test_insecure_http_is_allowed_only_when_asked_and_then_warned(tree: tuple[Path, Path], tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    source, cert = tree
    lab = "http://10.0.2.15:8080"
    args = ["--source", str(source), "--url", lab, "--trust", str(cert), "--output", str(tmp_path / "o")]
    assert build.main(args) == 2
    assert "clear text" in capsys.readouterr().err
    assert build.main([*args, "--insecure-http"]) == 0
    captured = capsys.readouterr()
    assert "WARNING" in captured.err and "clear text" in captured.err and "WARNING" in captured.out
    assert f"chain --replace --autofree {lab}/boot.ipxe ||" in (source / "src" / "bin" / "embedded.ipxe").read_text()


def test_help_explains_the_options() -> None:
    done = subprocess.run([str(BUILD), "--help"], capture_output=True, text=True, check=False)
    assert done.returncode == 0
    for option in ("--source", "--work", "tarball", "--url", "--trust", "--target", "--output", "--jobs", "--insecure-http",
                   "EMBED=", "TRUST=", "DOWNLOAD_PROTO_HTTPS", "liblzma-dev", "Exit status"):
        assert option in done.stdout
