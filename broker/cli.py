"""The `bootbroker` command: the helper daemon and the admin and helpdesk commands that talk to it.

`main(argv) -> exit status`, one handler per subcommand. Errors are printed as one clear line and give a
non-zero status; nothing is swallowed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .shared import config as config_module
from .shared.errors import BrokerError, ConfigError

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_CONFIG = 0, 1, 2, 3


def _config(args: argparse.Namespace) -> config_module.Config:
    return config_module.load(Path(args.config))


# A publish copies and checksums the whole disk (minutes for a few GiB on slow disks); the rest answer at once.
PUBLISH_WAIT = 3600.0


def _client(args: argparse.Namespace, timeout: float = 60.0) -> Any:
    from .shared.helper_client import HelperClient

    socket_path = Path(args.socket) if args.socket else _config(args).helper.socket
    return HelperClient(socket_path, timeout=timeout)


def _print(args: argparse.Namespace, data: Any, text: Callable[[Any], str]) -> None:
    print(json.dumps(data, indent=2, sort_keys=True) if args.json else text(data))


def cmd_helper(args: argparse.Namespace) -> int:
    from .shared.access import NssDirectory
    from .helper.backends import make_backend
    from .helper.operations import Helper
    from .helper.server import run_helper
    from .helper.lio import Lio

    if os.geteuid() != 0:
        print("bootbroker helper: must run as root (it manages LIO targets and overlays)", file=sys.stderr)
        return EXIT_ERROR
    config = _config(args)
    helper = Helper(config, make_backend(config.store), Lio(config.iscsi.portals), NssDirectory())
    import asyncio

    try:
        asyncio.run(run_helper(helper, config.helper))
    except KeyboardInterrupt:
        pass
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    config = _config(args)
    if config.broker is None:
        raise ConfigError(config.source, ["[broker]: missing; `serve` needs at least url = \"https://HOST\" (see README)"])
    import asyncio

    from .web.serve import run

    asyncio.run(run(config, config.broker))
    return EXIT_OK


def cmd_check_config(args: argparse.Namespace) -> int:
    config = _config(args)
    print(f"{config.source}: ok")
    print(f"  store      {config.store.path} ({config.store.backend.value})")
    print(f"  socket     {config.helper.socket}")
    print(f"  targets    {config.iscsi.iqn.prefix}:<image>.<user>")
    print(f"  portals    {', '.join(map(str, config.iscsi.portals))} (advertised: {', '.join(map(str, config.iscsi.advertise))})")
    if config.broker is not None:
        b = config.broker
        listen = ", ".join(map(str, b.listen))
        print(f"  broker     {b.url} on {listen}{' (INSECURE plain HTTP)' if b.insecure_http else ''}, PAM service {b.pam_service!r}")
    else:
        print("  broker     no [broker] section: `serve` cannot run with this file")
    for image in config.images.values():
        who = sorted(image.users) + [f"@{g}" for g in sorted(image.groups)]
        print(f"  image      {image.name}: {image.description} ({image.boot.value}; {', '.join(who)})")
    return EXIT_OK


def cmd_start_session(args: argparse.Namespace) -> int:
    grant = _client(args).call("ensure_session", image=args.image, user=args.user)
    _print(args, grant, lambda g: "\n".join(f"{k:14} {v}" for k, v in g.items()))
    return EXIT_OK


def cmd_end_session(args: argparse.Namespace) -> int:
    _client(args).call("end_session", image=args.image, user=args.user)
    print(f"ended the session of {args.user} on {args.image}")
    return EXIT_OK


def cmd_reset(args: argparse.Namespace) -> int:
    result = _client(args).call("reset", image=args.image, user=args.user)
    _print(args, result, lambda r: "\n".join(
        f"reset {r['user']} on {done['image']}: "
        + ("live session dropped; " if done["dropped_session"] else "")
        + f"previous overlay kept as backup {done['backup']}; a fresh copy is made at the next login"
        for done in r["reset"]
    ))
    return EXIT_OK


def cmd_rebase(args: argparse.Namespace) -> int:
    result = _client(args).call("rebase", image=args.image, user=args.user)
    _print(args, result, lambda r: (
        f"rebased {args.user} on {args.image} from v{r['from']} to v{r['to']}: "
        + ("live session dropped; " if r["dropped_session"] else "")
        + f"previous overlay kept as backup {r['backup']}; a fresh copy of v{r['to']} is made at the next login"
    ))
    return EXIT_OK


def cmd_restore(args: argparse.Namespace) -> int:
    result = _client(args).call("restore", image=args.image, user=args.user, backup=args.backup)
    _print(args, result, lambda r: (
        f"restored {args.user} on {args.image} from backup {r['restored']}"
        + ("; live session dropped" if r["dropped_session"] else "")
        + (f"; the overlay it replaced is kept as backup {r['backup']}" if r["backup"] else "")
    ))
    return EXIT_OK


def _local_time(timestamp: float) -> str:
    """A time stamp from the helper as the listings show it: local time, to the second."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def _backups_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no backups"
    lines = [f"{'USER':20} {'IMAGE':16} {'BACKUP':18} {'VER':>4} {'CREATED':19} {'USED':>9}"]
    for r in rows:
        created = _local_time(r["created"])
        lines.append(f"{r['user']:20} {r['image']:16} {r['backup']:18} {r['version']:>4} {created:19} "
                     f"{r['bytes_used'] / 2**20:>7.1f}Mi")
    return "\n".join(lines)


def cmd_backups(args: argparse.Namespace) -> int:
    _print(args, _client(args).call("backups"), _backups_table)
    return EXIT_OK


def _sessions_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no live sessions"
    lines = [f"{'USER':20} {'IMAGE':16} {'VER':>4} {'SINCE':20} {'LOGGED IN':9} {'OVERLAY':>10} {'FILL':>5}  INITIATOR"]
    for r in rows:
        since = _local_time(r["since"])
        fill = "-" if r["fill_percent"] is None else f"{r['fill_percent']:.0f}%"
        lines.append(
            f"{r['user']:20} {r['image']:16} {r['version']:>4} {since:20} {'yes' if r['logged_in'] else 'no':9} "
            f"{r['overlay_bytes'] / 2**20:>8.1f}Mi {fill:>5}  {r['initiator']}"
        )
    return "\n".join(lines)


def _set_aside_lines(notes: list[str]) -> list[str]:
    return [f"set aside at start: {note}" for note in notes]


def cmd_sessions(args: argparse.Namespace) -> int:
    client = _client(args)
    _print(args, client.call("sessions"), _sessions_table)
    if not args.json:  # what start-up could not use, so nobody takes a missing session for a logged-out one
        for line in _set_aside_lines(client.call("health").get("set_aside", [])):
            print(line, file=sys.stderr)
    return EXIT_OK


def _health_text(health: dict[str, Any]) -> str:
    lines = [f"{k:18} {v}" for k, v in health.items() if k != "set_aside"]
    return "\n".join(lines + (_set_aside_lines(health.get("set_aside", [])) or [f"{'set_aside':18} nothing"]))


def cmd_health(args: argparse.Namespace) -> int:
    _print(args, _client(args).call("health"), _health_text)
    return EXIT_OK


def _finding_line(finding: Any) -> str:
    return f"{finding.level.value:7} {finding.topic}: {finding.message}"


def _check_summary(path: Path, findings: list[Any]) -> tuple[int, int, str]:
    from .images.check import Level

    errors = sum(1 for f in findings if f.level is Level.ERROR)
    warnings = sum(1 for f in findings if f.level is Level.WARNING)
    verdict = "fix the errors before publishing it" if errors else "it can be published"
    return errors, warnings, f"{path}: {errors} error(s), {warnings} warning(s): {verdict}"


def cmd_images_check(args: argparse.Namespace) -> int:
    from .images.check import check_image

    path = Path(args.file)
    findings = check_image(path)
    errors, warnings, summary = _check_summary(path, findings)
    if args.json:
        print(json.dumps({"file": str(path), "errors": errors, "warnings": warnings,
                          "findings": [f.as_dict() for f in findings]}, indent=2, sort_keys=True))
    else:
        print("\n".join([*map(_finding_line, findings), summary]))
    return EXIT_ERROR if errors else EXIT_OK


def _publish_check(path: Path) -> bool:
    """Run `images check` on a FILE about to be published; print what is not ok; False if it has errors."""
    from .shared.errors import BackendFailure
    from .images.check import Level, check_image

    try:
        findings = check_image(path)
    except BackendFailure as e:
        raise BackendFailure(f"{e.message} (or pass --no-check to publish without checking the image)") from e
    for finding in findings:
        if finding.level is not Level.OK:
            print(_finding_line(finding), file=sys.stderr)
    errors, _, summary = _check_summary(path, findings)
    if errors:
        print(f"{summary}\nbootbroker images publish: not published; see `bootbroker images check {path}`, fix "
              "the image, or pass --no-check to publish it anyway", file=sys.stderr)
        return False
    return True


def cmd_images_publish(args: argparse.Namespace) -> int:
    if (args.file is None) == (args.from_overlay is None):
        raise SystemExit("bootbroker images publish: give FILE or --from-overlay IMAGE USER (one of them)")
    if args.from_overlay:
        from_image, user = args.from_overlay
        source = f"the overlay of {user} on {from_image}"
        print(f"publishing {source}: the helper copies and checksums the whole disk", file=sys.stderr)
        result = _client(args, PUBLISH_WAIT).call("publish_overlay", image=args.image, from_image=from_image, user=user)
    else:
        source = os.path.abspath(args.file)
        if not args.no_check and not _publish_check(Path(args.file)):
            return EXIT_ERROR
        size = f" ({os.path.getsize(source) / 2**30:.1f} GiB)" if os.path.isfile(source) else ""
        print(f"publishing {source}{size}: the helper copies and checksums it", file=sys.stderr)
        result = _client(args, PUBLISH_WAIT).call("publish", image=args.image, source=source)
    print(f"published {result['image']} version {result['version']} from {source}\n"
          f"  sha256 {result['sha256']}" + ("" if result["immutable"] else
                                            "\n  (not made immutable: the store's filesystem has no such flag)"))
    if result.get("kernel"):
        print(f"  kernel {result['kernel']} and initrd {result['initrd']} kept beside it (served for netroot)")
    else:
        print("  no kernel and initrd of its own: it cannot boot by netroot without kernel and initrd URLs")
    return EXIT_OK


def _images_table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'IMAGE':16} {'VER':>4} {'CURRENT':7} {'PUBLISHED':19} {'SIZE':>9} {'USED':>9} {'OVERLAYS':>8} {'BACKUPS':>7}"]
    for image in rows:
        if not image["versions"]:
            lines.append(f"{image['image']:16}    - (no published version: bootbroker images publish {image['image']} FILE)")
        for v in image["versions"]:
            published = _local_time(v["published"])
            lines.append(
                f"{image['image']:16} {v['version']:>4} {'yes' if v['current'] else 'no':7} {published:19} "
                f"{v['size'] / 2**20:>7.1f}Mi {v['bytes_used'] / 2**20:>7.1f}Mi {v['overlays']:>8} {v['backups']:>7}"
            )
    return "\n".join(lines)


def cmd_images_list(args: argparse.Namespace) -> int:
    _print(args, _client(args).call("images"), _images_table)
    return EXIT_OK


def image_and_version(text: str) -> tuple[str, int | None]:
    """IMAGE or IMAGE@VERSION, as `images retire` takes it."""
    image, at, version = text.partition("@")
    if not at:
        return image, None
    if not version.isdigit() or int(version) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: the version after @ must be a whole number from 1")
    return image, int(version)


def cmd_images_retire(args: argparse.Namespace) -> int:
    image, version = args.target
    result = _client(args).call("retire", image=image, version=version)
    print(f"retired {result['image']} {', '.join(f'v{v}' for v in result['retired'])}")
    return EXIT_OK


def cmd_images_current(args: argparse.Namespace) -> int:
    result = _client(args).call("set_current", image=args.image, version=args.version)
    print(f"{result['image']}: v{result['current']} is current (was v{result['previous']}); new overlays are made "
          "from it, existing ones stay on their version (see rebase)")
    return EXIT_OK


def _secret_from(path: str | None, what: str) -> str | None:
    """A password from a file (or '-' for standard input): never from the command line, where `ps` shows it."""
    if path is None:
        return None
    text = sys.stdin.readline() if path == "-" else Path(path).read_text()
    secret = text.rstrip("\n")
    if not secret:
        raise SystemExit(f"bootbroker images build: {what} from {path} is empty")
    return secret


def cmd_images_build(args: argparse.Namespace) -> int:
    from .images.build import BuildOptions, build_image, netroot_cmdline

    try:
        options = BuildOptions(
            output=Path(args.output), size=args.size, packages=tuple(args.package), hostname=args.hostname,
            mirror=args.mirror, root_password=_secret_from(args.root_password_file, "the root password"),
            user=args.user, user_password=_secret_from(args.user_password_file, "the user's password"),
            customize=tuple(Path(c) for c in args.customize), initramfs=args.initramfs, force=args.force,
        )
    except OSError as e:
        raise SystemExit(f"bootbroker images build: {e}") from None
    began = time.monotonic()
    root_uuid = build_image(options)
    print(f"built {options.output} in {time.monotonic() - began:.0f} s: Debian 12 for an iSCSI root, BIOS and UEFI, "
          f"initramfs by {options.initramfs}\n"
          f"  check it:   bootbroker images check {options.output}\n"
          f"  publish it: bootbroker images publish IMAGE {options.output}")
    if options.initramfs == "dracut":
        print(f'  to boot it by netroot, in [images.IMAGE]: boot = "netroot" and cmdline = "{netroot_cmdline(root_uuid)}"')
    return EXIT_OK


def _size(text: str) -> int:
    """A size such as 4G, 2560M or a number of bytes."""
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    number, unit = text[:-1] if text[-1:].isalpha() else text, text[-1:].upper() if text[-1:].isalpha() else ""
    if not number.isdigit() or unit not in units:
        raise argparse.ArgumentTypeError(f"{text!r}: give a size such as 4G or 2560M")
    return int(number) * units[unit]


def _version(text: str) -> int:
    if not text.removeprefix("v").isdigit() or int(text.removeprefix("v")) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: a version is a whole number from 1 (see `bootbroker images list`)")
    return int(text.removeprefix("v"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bootbroker",
        description="On-demand iSCSI netboot broker: per-user copy-on-write disks behind iPXE, PAM and Linux LIO.",
    )
    parser.add_argument(
        "--config", default=os.environ.get("BOOTBROKER_CONFIG", str(config_module.DEFAULT_PATH)),
        help="configuration file (default: $BOOTBROKER_CONFIG or %(default)s)",
    )
    parser.add_argument("--socket", help="helper socket (default: [helper] socket from the configuration)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug detail")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler: Callable[[argparse.Namespace], int], help: str, json_output: bool = False) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(handler=handler)
        if json_output:
            p.add_argument("--json", action="store_true", help="print JSON for scripts")
        return p

    add("helper", cmd_helper, "run the privileged helper daemon (root): overlays, LIO targets, sessions")
    serve = add("serve", cmd_serve, "run the HTTPS broker that iPXE talks to (unprivileged; generates its certificate on first start)")
    serve.epilog = (
        "Reads [broker] and [images.*] from the configuration and listens on [broker] listen. On every start it "
        "prints the certificate's SHA-256 fingerprint (build iPXE with ipxe/build.py --trust that certificate). "
        "Asks PAM service [broker] pam_service; reaches the helper at [helper] socket. Stops on SIGTERM or Ctrl-C."
    )
    add("check-config", cmd_check_config, "validate the configuration file and summarise it")
    for name, handler, text in (
        ("start-session", cmd_start_session, "start a boot session by hand and print its CHAP credentials (root or broker)"),
        ("end-session", cmd_end_session, "end a user's live boot session; the client is disconnected"),
        ("reset", cmd_reset, "give a user a fresh copy of an image (no IMAGE: of every image they have a copy of) "
                             "at the next login; the old one is kept as a backup, a live session is dropped"),
        ("rebase", cmd_rebase, "move a user to the image's current version (a fresh copy at the next login; the old "
                               "overlay is kept as a backup, as by reset)"),
    ):
        p = add(name, handler, text, json_output=name != "end-session")
        p.add_argument("user", help="the user's login name")
        p.add_argument("image", nargs="?" if name == "reset" else None, help="the image name")
    restore = add("restore", cmd_restore, "bring back a user's backup (the newest, or BACKUP) as their overlay; "
                  "the overlay it replaces is kept as a backup", True)
    restore.add_argument("user", help="the user's login name")
    restore.add_argument("image", help="the image name")
    restore.add_argument("backup", nargs="?", help="a backup name from `bootbroker backups` (default: the newest)")
    add("backups", cmd_backups, "list the backups reset and restore keep: user, image, name, version, bytes used", True)
    add("sessions", cmd_sessions, "list live boot sessions: who, which image, since when, logged in, overlay size, fill level "
                                  "(dm-thin: the pool's; dm-snapshot: the COW file's)", True)
    add("health", cmd_health, "show the helper's health summary", True)
    images = sub.add_parser("images", help="manage golden images", description="manage golden images")
    images_sub = images.add_subparsers(dest="images_command", required=True, metavar="ACTION")
    publish = images_sub.add_parser(
        "publish", help="store FILE, or a user's prepared disk, as the next version of IMAGE (root)",
        description="Store a raw disk image FILE, or with --from-overlay a user's overlay (a teacher's prepared "
                    "disk: its golden version with their changes; they must not be logged in), as the next "
                    "version of IMAGE. It becomes current: new overlays are made from it, existing ones stay on "
                    "theirs (see rebase). Reflinked where the store can, checksummed, made immutable. Its own "
                    "kernel and initrd are read out of it and kept beside it (what a netroot boot gets); an image "
                    "with boot = \"netroot\" and no kernel and initrd URLs refuses a disk without them.",
    )
    publish.set_defaults(handler=cmd_images_publish)
    publish.add_argument("image", help="an image named in the configuration")
    publish.add_argument("file", nargs="?", help="a raw disk image file")
    publish.add_argument("--from-overlay", nargs=2, metavar=("FROM_IMAGE", "USER"),
                         help="publish USER's overlay of FROM_IMAGE instead of a file")
    publish.add_argument("--no-check", action="store_true",
                         help="publish FILE even if `images check` finds errors in it (FILE is checked first "
                              "otherwise; warnings never stop a publish)")
    check = images_sub.add_parser(
        "check", help="check a raw disk image FILE before publishing it: will it boot as an iSCSI disk?",
        description="Read a raw disk image FILE (no loop device, no mount) and report, one line each, what "
                    "was found and what to change: the partition table, BIOS and UEFI boot (boot code, BIOS "
                    "boot partition, \\EFI\\BOOT\\BOOTX64.EFI), the root filesystem named by UUID in "
                    "/etc/fstab and on the kernel command line, and an initramfs that logs in to the iSCSI "
                    "disk from the iBFT (open-iscsi with ISCSI_AUTO=true, or dracut with rd.iscsi.firmware=1). "
                    "Exits 1 if there are errors (`images publish` then refuses FILE), 0 otherwise. Needs "
                    "fdisk, mtools, e2fsprogs, initramfs-tools-core and zstd.",
    )
    check.set_defaults(handler=cmd_images_check)
    check.add_argument("file", help="a raw disk image file (the whole disk, not a partition)")
    check.add_argument("--json", action="store_true", help="print JSON for scripts")
    listing = images_sub.add_parser(
        "list", help="versions of every image: current, size, bytes used, overlays and backups made from each",
    )
    listing.set_defaults(handler=cmd_images_list)
    listing.add_argument("--json", action="store_true", help="print JSON for scripts")
    retire = images_sub.add_parser(
        "retire", help="delete IMAGE@VERSION, or every version of IMAGE (root)",
        description="Delete one version of an image (IMAGE@VERSION), or every version (IMAGE). Refused for the "
                    "current version, and while overlays or backups made from a version exist: the error names "
                    "their users (rebase or reset them; their backups go after [store] backup_days).",
    )
    retire.set_defaults(handler=cmd_images_retire)
    retire.add_argument("target", type=image_and_version, metavar="IMAGE[@VERSION]")
    current = images_sub.add_parser(
        "current", help="make a published VERSION of IMAGE current again (root)",
        description="Make VERSION (still in the store: see `images list`) the version new overlays of IMAGE are "
                    "made from, e.g. to go back from a bad publish. Overlays already made stay on their version; "
                    "`rebase` moves a user. Never edit the store's `current` file by hand.",
    )
    build = images_sub.add_parser(
        "build", help="build a bootable Debian 12 disk image for iSCSI root from Debian's packages (root)",
        description="Build OUTPUT, a raw disk image of Debian 12 made with mmdebstrap from Debian's packages, "
                    "that any workstation boots from its iSCSI disk: GPT with GRUB for BIOS and UEFI (the "
                    "removable path \\EFI\\BOOT\\BOOTX64.EFI), root by UUID, open-iscsi in the initramfs logging "
                    "in from the iBFT that iPXE leaves, sessions kept at shutdown, timeouts that ride out a "
                    "helper restart or a server reboot, a serial console. Needs root, network access to the "
                    "Debian mirror, and the packages mmdebstrap, fdisk, dosfstools, mtools, e2fsprogs; no loop "
                    "devices. Takes a few minutes; then `images check` and `images publish` it.",
    )
    build.set_defaults(handler=cmd_images_build)
    build.add_argument("output", help="the disk image file to write (sparse)")
    build.add_argument("--size", type=_size, default="4G", help="the disk's size, e.g. 8G (default: %(default)s)")
    build.add_argument("--package", action="append", default=[], metavar="NAME",
                       help="a Debian package to add (repeat for more), e.g. --package sudo --package vim")
    build.add_argument("--hostname", default="workstation", help="the system's host name (default: %(default)s)")
    build.add_argument("--mirror", help="a Debian mirror URL or sources line (default: mmdebstrap's, with updates "
                                        "and security)")
    build.add_argument("--root-password-file", metavar="FILE",
                       help="set root's password from FILE's first line ('-': standard input); default: root locked")
    build.add_argument("--user", help="create this local account")
    build.add_argument("--user-password-file", metavar="FILE", help="its password, as --root-password-file")
    build.add_argument("--customize", action="append", default=[], metavar="SCRIPT",
                       help="an executable run with the image's root directory as $1 before the disk is made "
                            "(repeatable), e.g. to add files or enable units")
    from .images.build import INITRAMFS_KINDS

    build.add_argument("--initramfs", choices=INITRAMFS_KINDS, default=INITRAMFS_KINDS[0],
                       help="what makes the initramfs that logs in to the iSCSI disk: Debian's initramfs-tools "
                            "(boots by sanboot, from the iBFT) or dracut (boots by sanboot and by netroot, as "
                            "Fedora's do; a larger initramfs) (default: %(default)s)")
    build.add_argument("--force", action="store_true", help="replace OUTPUT if it exists")
    current.set_defaults(handler=cmd_images_current)
    current.add_argument("image", help="an image named in the configuration")
    current.add_argument("version", type=_version, help="a published version, e.g. 2")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except ConfigError as e:
        print(f"bootbroker: configuration error in {e}", file=sys.stderr)
        return EXIT_CONFIG
    except BrokerError as e:
        print(f"bootbroker: {e.code.value}: {e.message}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
