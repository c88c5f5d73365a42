"""The PAM service file asks pam_unix for no failure delay (issue 15): libpam would otherwise sleep 2 s in
the PAM thread after each wrong password, and `pam_concurrency` wrong guesses a second would hold every
PAM thread; the broker tarpits failures itself (`failure_delay`), in the event loop, holding no thread.

libpam itself reads the file: an application that sets PAM_FAIL_DELAY to a function of its own is told the
delay the modules asked for instead of libpam sleeping it, so the test reads the delay without waiting."""

from __future__ import annotations

import ctypes
import shutil
from pathlib import Path

PAM_FILE = Path(__file__).parents[2] / "scripts" / "pam.d" / "bootbroker"
PAM_FAIL_DELAY = 10  # pam_set_item's item type (security/_pam_types.h)


class PamMessage(ctypes.Structure):
    _fields_ = [("msg_style", ctypes.c_int), ("msg", ctypes.c_char_p)]


class PamResponse(ctypes.Structure):
    _fields_ = [("resp", ctypes.c_void_p), ("resp_retcode", ctypes.c_int)]


ConvFunc = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.POINTER(PamMessage)),
                            ctypes.POINTER(ctypes.POINTER(PamResponse)), ctypes.c_void_p)
DelayFunc = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p)


class PamConv(ctypes.Structure):
    _fields_ = [("conv", ConvFunc), ("appdata_ptr", ctypes.c_void_p)]


def requested_delay(confdir: Path) -> int:
    """The failure delay (microseconds) the stack in confdir/bootbroker asks for after a wrong password."""
    libpam = ctypes.CDLL("libpam.so.0")
    libc = ctypes.CDLL(None)
    libc.calloc.restype = ctypes.c_void_p
    libc.calloc.argtypes = [ctypes.c_size_t, ctypes.c_size_t]
    libc.strdup.restype = ctypes.c_void_p
    libc.strdup.argtypes = [ctypes.c_char_p]
    delays: list[int] = []

    def converse(count: int, messages: object, responses: object, _data: int) -> int:
        answers = ctypes.cast(libc.calloc(count, ctypes.sizeof(PamResponse)), ctypes.POINTER(PamResponse))
        for i in range(count):
            answers[i].resp = libc.strdup(b"not-the-password")
        responses[0] = answers  # type: ignore[index]
        return 0

    conversation = PamConv(ConvFunc(converse), None)
    delay = DelayFunc(lambda _status, usec, _data: delays.append(usec))
    handle = ctypes.c_void_p()
    assert libpam.pam_start_confdir(b"bootbroker", b"bootbroker-no-such-user", ctypes.byref(conversation),
                                    str(confdir).encode(), ctypes.byref(handle)) == 0
    libpam.pam_set_item.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
    assert libpam.pam_set_item(handle, PAM_FAIL_DELAY, ctypes.cast(delay, ctypes.c_void_p)) == 0
    code = libpam.pam_authenticate(handle, 0)
    libpam.pam_end(handle, code)
    assert code != 0 and len(delays) == 1, (code, delays)  # refused, and libpam reported its delay once
    return delays[0]


def test_pam_unix_is_asked_for_no_failure_delay(tmp_path: Path) -> None:
    confdir = tmp_path / "pam.d"
    confdir.mkdir()
    shutil.copy(PAM_FILE, confdir / "bootbroker")
    assert requested_delay(confdir) == 0
    # The same stack without `nodelay` asks for pam_unix's 2 s (libpam varies it by up to a quarter):
    # the test can see a delay when there is one.
    (confdir / "bootbroker").write_text("auth required pam_unix.so\naccount required pam_unix.so\n")
    assert 1_500_000 <= requested_delay(confdir) <= 2_500_000
