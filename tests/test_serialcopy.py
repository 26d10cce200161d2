"""Copying files over a serial line that loses bytes: the emulated micro:bit
(MicroPython 1.9.2, no raw-paste flow control), with losses injected on the host side
of its pty at chosen places, as the emulator itself drops bytes now and then."""

from __future__ import annotations

import pytest
from micromlp.host import boards, serialcopy
from micromlp.host import deploy as dp

DATA = bytes(range(256)) * 6 + b"def f(x):\n    return x * 3\n" * 20  # 2,076 bytes


class Lossy:
    """The port with faults: `cut` drops byte 7 of the pieces numbered in it (a byte
    lost inside a command), `no_eot` drops the end-of-command marker (Ctrl-D) of the
    commands numbered in it, `mute` drops the first '@' the board sends after each of
    the numbered commands (a garbled reply)."""

    def __init__(self, serial, cut=(), no_eot=(), mute=()):
        self._serial, self.cut, self.no_eot, self.mute = serial, set(cut), set(no_eot), set(mute)
        self.writes = self.commands = self.dropped = 0
        self._muting = False

    def write(self, data: bytes) -> int:
        if data == b"\x04":  # mpremote ends a raw REPL command with a lone Ctrl-D
            self.commands += 1
            self._muting = self.commands in self.mute
            if self.commands in self.no_eot:
                self.dropped += 1
                return 1
        else:
            self.writes += 1
            if self.writes in self.cut and len(data) > 7:
                self.dropped += 1
                data = data[:7] + data[8:]
        return self._serial.write(data)

    def read(self, n: int = 1) -> bytes:
        b = self._serial.read(n)
        if self._muting and b"@" in b:
            self._muting = False
            self.dropped += 1
            b = b.replace(b"@", b"", 1)
        return b

    def __getattr__(self, name):
        return getattr(self._serial, name)


@pytest.fixture
def microbit():
    board = boards.emulate("microbit")
    t = dp.connect(board.port)
    raw = t.serial
    yield t, raw
    t.serial = raw
    t.close()
    board.stop()


def _lossy(t, raw, **faults) -> Lossy:
    # under deploy's paced writes (32-byte pieces), as deploy sends to this board
    lossy = Lossy(raw, **faults)
    t.serial = dp._GentleSerial(lossy)
    return lossy


def _held(t, raw, name):
    t.serial = dp._GentleSerial(raw)  # the faults end here
    return serialcopy.read_back(t, name)


def test_bytes_lost_inside_commands_are_sent_again(microbit):
    t, raw = microbit
    lossy = _lossy(t, raw, cut=range(5, 10_000, 37))  # a byte cut every 37 pieces
    serialcopy.copy(t, "a.bin", DATA, rename=False)
    assert lossy.dropped >= 5
    assert _held(t, raw, "a.bin") == (len(DATA), serialcopy.content_hash(DATA))


def test_mpremote_alone_writes_a_wrong_file_under_the_same_losses(microbit):
    # the failure the chunk checks exist for: the same faults through fs_writefile
    t, raw = microbit
    from mpremote.transport import TransportExecError

    lossy = _lossy(t, raw, cut=range(5, 10_000, 37))
    try:  # a byte lost inside a literal writes a wrong file; elsewhere, a SyntaxError
        t.fs_writefile("b.bin", DATA, chunk_size=96)
    except TransportExecError as e:
        assert "SyntaxError" in e.error_output
    else:
        assert lossy.dropped >= 1
        assert _held(t, raw, "b.bin") != (len(DATA), serialcopy.content_hash(DATA))


def test_garbled_replies_are_asked_again_and_nothing_is_written_twice(microbit):
    t, raw = microbit
    lossy = _lossy(t, raw, mute={3, 4, 9, 15})  # the board's byte count loses its '@'
    serialcopy.copy(t, "c.bin", DATA, rename=False)
    assert lossy.dropped == 4
    assert _held(t, raw, "c.bin") == (len(DATA), serialcopy.content_hash(DATA))


def test_a_command_cut_short_is_cleared_and_sent_again(microbit):
    t, raw = microbit
    raw.timeout = 2  # the host notices the missing reply sooner than deploy's 20 s
    lossy = _lossy(t, raw, no_eot={4})
    serialcopy.copy(t, "d.bin", DATA, rename=False)
    assert lossy.dropped == 1
    assert _held(t, raw, "d.bin") == (len(DATA), serialcopy.content_hash(DATA))


def test_a_line_that_loses_everything_gives_a_clear_error(microbit):
    t, raw = microbit
    _lossy(t, raw, cut=range(1, 10_000))
    with pytest.raises(serialcopy.CopyError, match=r"^copying e\.bin to the board failed 3 "
                       r"times: opening e\.bin\.part on the board failed 6 times$"):
        serialcopy.copy(t, "e.bin", DATA)
