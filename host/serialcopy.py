"""Copying a file to a board over mpremote's raw REPL, checked chunk by chunk.

A board whose REPL has no flow control (MicroPython before 1.14: no raw-paste mode)
loses bytes when commands reach its UART faster than it drains them; the emulated
micro:bit does so now and then, more often on a loaded host. mpremote's
`fs_writefile` sends a file as `w(b'...')` commands and checks nothing: a byte
dropped inside a literal writes a shorter file. Here each chunk carries its offset,
length and a hash; the board writes it only if all three match and replies with how
many bytes it holds. A chunk that did not land is sent again, a garbled reply is asked
for again, and a command cut short on the line (its end marker lost) is cleared by
re-entering the raw REPL. The whole file is then read back and compared.
"""

from __future__ import annotations

import contextlib
import io
import re

CHUNK = 96  # bytes of file per command (up to 4x that as an escaped literal)
RETRIES = 6  # sends of one chunk before the copy gives up

# The board's side, in the two names mpremote's own copy uses (no new entries in the
# board's globals: a micro:bit has ~8 KB of heap): o[0] counts the bytes written; a
# chunk lands only at offset o[0] and only when its length and hash are what the host
# computed. w(word, -1, ...) answers with the word's hash (opening sends the check word,
# so a byte lost inside the hash loop is caught); w(b'', -2, ...) with o[0].
_OPEN = """f=open({name!r},'wb')
def w(d,a,n,h,o=[0]):
 k=0
 for v in d:
  k=(k*31+v)%65521
 if a==o[0] and len(d)==n and k==h:
  f.write(d)
  o[0]+=n
 print('@%d@'%(k if a==-1 else o[0]))
w({word!r},-1,0,0)
"""
_QUERY = "w(b'',-2,0,0)"
_PROBE_WORD = b"micromlp"

# The board reads a file back: its size and a hash (in small ints: a 32-bit board
# makes no bignum), which the host compares with what it sent.
_READ_BACK = """n = h = 0
f = open({name!r}, 'rb')
b = f.read(64)
while b:
    n += len(b)
    for v in b:
        h = (h * 31 + v) % 65521
    b = f.read(64)
f.close()
print(n, h)
"""


class CopyError(RuntimeError):
    """A file did not reach the board intact."""


def content_hash(data: bytes) -> int:
    """The hash the board computes (w in _OPEN, and _READ_BACK)."""
    h = 0
    for v in data:
        h = (h * 31 + v) % 65521
    return h


def raw_repl(t, soft_reset: bool = False) -> None:
    """Enter the board's raw REPL (after a soft reset, or not), keeping mpremote's echo
    of what it read off stdout."""
    with contextlib.redirect_stdout(io.StringIO()):
        t.enter_raw_repl(soft_reset=soft_reset)


def error_line(e) -> str:
    """What a command that failed on the board said: the last line of its output (the
    exception), else the transport's own error."""
    msg = (getattr(e, "error_output", "") or "").strip().splitlines()
    return msg[-1] if msg else str(e)


def resync(t) -> None:
    """Back to a clean raw REPL prompt after a command was cut short on the line:
    Ctrl-C clears a half-received command, Ctrl-A restarts the raw REPL."""
    raw_repl(t)


def _held(t, command: str, expect: set[int]) -> int | None:
    """Run a command that ends by printing '@<number>@' (bytes held, or the check word's
    hash); the number if it is one of `expect`, else None (a garbled or failed command;
    a command cut short also has the raw REPL reset)."""
    from mpremote.transport import TransportError, TransportExecError

    try:
        out = t.exec(command)
    except TransportExecError:  # a dropped byte made a syntax error: nothing was written
        return None
    except TransportError:
        resync(t)
        return None
    m = re.search(rb"@(\d+)@", out)
    if m and int(m.group(1)) in expect:
        return int(m.group(1))
    return None


def _ask_held(t, expect: set[int], tries: int = 4) -> int:
    for _ in range(tries):
        held = _held(t, _QUERY, expect)
        if held is not None:
            return held
    raise CopyError(f"the board's byte count did not come back intact in {tries} tries")


def send(t, name: str, data: bytes, chunk: int = CHUNK, retries: int = RETRIES) -> None:
    """Write `data` to the board's file `name`, chunk by chunk, each chunk checked on
    the board before it is written (see the module's docstring)."""
    from mpremote.transport import TransportError, TransportExecError

    opening = _OPEN.format(name=name, word=_PROBE_WORD)
    for _ in range(retries):  # opening is idempotent: 'wb' empties the file, o[0] = 0
        if _held(t, opening, {content_hash(_PROBE_WORD)}) is not None:
            break
    else:
        raise CopyError(f"opening {name} on the board failed {retries} times")
    at = misses = 0
    try:
        while at < len(data):
            part = data[at : at + chunk]
            expect = {at, at + len(part)}
            held = _held(t, f"w({part!r},{at},{len(part)},{content_hash(part)})", expect)
            if held is None:  # the reply or the command garbled: ask what landed
                held = _ask_held(t, expect)
            if held == at:
                misses += 1
                if misses >= retries:
                    raise CopyError(f"{name}: the chunk at byte {at} did not land intact "
                                    f"in {retries} sends")
                continue
            at, misses = held, 0
    finally:  # and the board's names let go (a micro:bit has ~8 KB of heap)
        with contextlib.suppress(TransportError, TransportExecError):
            t.exec("f.close()\nf = w = None")


def read_back(t, name: str, tries: int = 3) -> tuple[int, int] | None:
    """The size and hash of the board's file `name`, as the board computes them (a
    reply garbled on the line is asked for again); None if no reply was intact."""
    from mpremote.transport import TransportError, TransportExecError

    for _ in range(tries):
        try:
            got = t.exec(_READ_BACK.format(name=name)).split()
            return int(got[-2]), int(got[-1])
        except (TransportExecError, ValueError, IndexError):
            continue
        except TransportError:
            resync(t)
    return None


def copy(t, name: str, data: bytes, rename: bool = True, tries: int = 3) -> None:
    """Write `data` to the board's file `name` (via name.part, renamed once checked,
    where the board can rename): send() it, then read it back whole and compare its
    size and hash; a file that still came out wrong is written again from the start."""
    tmp = name + ".part" if rename else name
    want = (len(data), content_hash(data))
    err = ""
    for _ in range(tries):
        try:
            send(t, tmp, data)
        except CopyError as e:
            err = str(e)
            continue
        got = read_back(t, tmp)
        if got == want:
            if rename:
                _rename(t, tmp, name)
            return
        err = ("no intact reply reading it back" if got is None else
               f"the board holds {got[0]} bytes (hash {got[1]}), {want[0]} bytes "
               f"(hash {want[1]}) were sent")
    raise CopyError(f"copying {name} to the board failed {tries} times: {err}")


def _rename(t, tmp: str, name: str) -> None:
    from mpremote.transport import TransportExecError

    try:
        t.exec(f"import os\ntry:\n os.remove({name!r})\nexcept OSError:\n pass\n"
               f"os.rename({tmp!r},{name!r})")
    except TransportExecError as e:
        raise CopyError(f"renaming {tmp} to {name} on the board failed: "
                        f"{error_line(e)}") from None
