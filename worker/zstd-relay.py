#!/usr/bin/python3 -IS
"""The worker's end of compression "zstd" (see README, "Which compression for which link").

    nix-hcloud-builder-zstd-relay [--level N] [--adapt MIN:MAX] -- nix-daemon --stdio
    nix-hcloud-builder-zstd-relay --await
    nix-hcloud-builder-zstd-relay --check

Runs the Nix command (the same allow-list as the daemon's endpoint: nix-daemon --stdio or
nix-store --serve [--write], optionally --store URI) without a shell, and relays its stdin and
stdout through zstd: stdin is one zstd stream from the daemon, decompressed into the command;
the command's stdout is compressed at level N (default 3) and flushed whenever the command
pauses, so every protocol message reaches the daemon at once. stderr passes through as it is.
With --adapt, the level adapts between MIN and MAX as the daemon's does (src/ssh/zstd-adapt.ts,
the same rules: a test runs both on the same cases): up while the link is what the output waits
for, down (then pass-through frames) while compressing is; each change ends the frame and is
reported in a skippable frame the daemon reads (src/ssh/zstd-frames.ts). Out of pass-through
(after the warm-up, on a retry), a level starts with a probe (PROBE_BYTES) in small frames.
With --await, the relay is started ahead of its session (a spare): it loads what it needs, then
waits for one line on stdin, the JSON array of the arguments above, and goes on as if started
with them; the zstd stream follows that line.

Python 3 and libzstd are what cloud-init images have anyway (cloud-init is Python; Debian's
dpkg and Ubuntu's depend on libzstd), so a stock image needs nothing installed; the NixOS
worker image names its libzstd in NIX_HCLOUD_BUILDER_LIBZSTD. libzstd is used through ctypes,
whose calls release the GIL: the two directions run in parallel threads.

It runs once per session, before the command starts, so its start is on every session's path:
python3 -I -S (no site-packages, no environment), only modules that load fast (no subprocess,
threading or signal: they import much of the standard library), libzstd by its soname (no
ctypes.util, which runs ldconfig).
"""
import _thread
import ctypes
import os
import select
import sys
from time import monotonic

CHUNK = 128 * 1024
# Flush at least this often while the command writes without pause, so the daemon never waits long.
MAX_UNFLUSHED = 1024 * 1024

# The allow-list of src/ssh/nix-command.ts, whose PROGRAM_PATH and STORE_URI are regular
# expressions; here in string tests, since importing re costs more than the rest of the start (a
# test runs both on the same cases). A program given as a path is a file of a store path,
# /nix/store/<hash>-<name>/…/nix-daemon, with no component starting with "." (so no "." or "..").
NIX_BASE32 = frozenset("0123456789abcdfghijklmnpqrsvwxyz")
NAME_START = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+_=-")
NAME_CHARS = NAME_START | {"."}
STORE_URI_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._~:/?#@&+,=%-")
PROGRAMS = ("nix-daemon", "nix-store")
STORE = "/nix/store/"


def store_program(path):
    """nix-daemon or nix-store for a path that PROGRAM_PATH passes, else None."""
    if not path.startswith(STORE):
        return None
    parts = path[len(STORE) :].split("/")
    if len(parts) < 2 or parts[-1] not in PROGRAMS:
        return None
    hash_name = parts[0]
    if len(hash_name) < 34 or hash_name[32] != "-" or not NIX_BASE32.issuperset(hash_name[:32]):
        return None
    for component in [hash_name[33:]] + parts[1:-1]:
        if not component or component[0] not in NAME_START or not NAME_CHARS.issuperset(component):
            return None
    return parts[-1]


def is_store_uri(value):
    return 0 < len(value) <= 1024 and STORE_URI_CHARS.issuperset(value)


class Refused(Exception):
    pass


def check_nix_command(argv):
    """The endpoint's allow-list (src/ssh/nix-command.ts), applied to the words it rendered."""
    if not argv:
        raise Refused("empty command")
    first, rest = argv[0], list(argv[1:])
    program = first if first in PROGRAMS else store_program(first)
    if not program and first.startswith("/"):
        raise Refused("program %r is not nix-daemon or nix-store in the Nix store (/nix/store/<hash>-<name>/bin/...)" % first[:80])
    if not program:
        raise Refused("program %r is not a Nix remote-store program" % first[:80])
    saw_mode = write = store = False
    while rest:
        arg = rest.pop(0)
        if arg == "--stdio" and program == "nix-daemon" and not saw_mode:
            saw_mode = True
        elif arg == "--serve" and program == "nix-store" and not saw_mode:
            saw_mode = True
        elif arg == "--write" and program == "nix-store" and not write:
            write = True
        elif arg == "--store" and not store:
            value = rest.pop(0) if rest else ""
            if not is_store_uri(value):
                raise Refused("--store needs a store URI")
            store = True
        else:
            raise Refused("argument %r is not allowed" % arg[:80])
    if not saw_mode:
        raise Refused("nix-daemon needs --stdio" if program == "nix-daemon" else "nix-store needs --serve")
    return argv


class InBuffer(ctypes.Structure):
    _fields_ = [("src", ctypes.c_void_p), ("size", ctypes.c_size_t), ("pos", ctypes.c_size_t)]


class OutBuffer(ctypes.Structure):
    _fields_ = [("dst", ctypes.c_void_p), ("size", ctypes.c_size_t), ("pos", ctypes.c_size_t)]


ZSTD_C_COMPRESSION_LEVEL = 100
ZSTD_C_WINDOW_LOG = 101
ZSTD_C_HASH_LOG = 102
ZSTD_C_CHAIN_LOG = 103
ZSTD_RESET_SESSION_AND_PARAMETERS = 3
# The daemon's decoder holds one window per session, and many sessions stream at once: 512 KiB
# instead of zstd's 2 MiB for level 3. This direction crosses the user's downlink, the fast one;
# the upload keeps zstd's window for its level (5 % fewer bytes on the bench's payload).
WINDOW_LOG = 19
ZSTD_D_WINDOW_LOG_MAX = 100
ZSTD_E_CONTINUE, ZSTD_E_FLUSH, ZSTD_E_END = 0, 1, 2


# libzstd's soname since 1.0; ldconfig's cache (or the NixOS image's variable) finds it.
LIBZSTD = "libzstd.so.1"


def open_libzstd():
    named = os.environ.get("NIX_HCLOUD_BUILDER_LIBZSTD")
    if named:
        return ctypes.CDLL(named)
    try:
        return ctypes.CDLL(LIBZSTD)
    except OSError:
        # Off the usual path: ctypes.util asks ldconfig and the compiler, tens of milliseconds.
        from ctypes.util import find_library

        found = find_library("zstd")
        if not found:
            raise
        return ctypes.CDLL(found)


def load_zstd():
    lib = open_libzstd()
    lib.ZSTD_createCCtx.restype = ctypes.c_void_p
    lib.ZSTD_createDCtx.restype = ctypes.c_void_p
    lib.ZSTD_CCtx_setParameter.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    lib.ZSTD_CCtx_setParameter.restype = ctypes.c_size_t
    lib.ZSTD_CCtx_reset.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.ZSTD_CCtx_reset.restype = ctypes.c_size_t
    lib.ZSTD_DCtx_setParameter.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    lib.ZSTD_DCtx_setParameter.restype = ctypes.c_size_t
    lib.ZSTD_compressStream2.argtypes = [ctypes.c_void_p, ctypes.POINTER(OutBuffer), ctypes.POINTER(InBuffer), ctypes.c_int]
    lib.ZSTD_compressStream2.restype = ctypes.c_size_t
    lib.ZSTD_compress2.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t]
    lib.ZSTD_compress2.restype = ctypes.c_size_t
    lib.ZSTD_compressBound.argtypes = [ctypes.c_size_t]
    lib.ZSTD_compressBound.restype = ctypes.c_size_t
    lib.ZSTD_decompressStream.argtypes = [ctypes.c_void_p, ctypes.POINTER(OutBuffer), ctypes.POINTER(InBuffer)]
    lib.ZSTD_decompressStream.restype = ctypes.c_size_t
    lib.ZSTD_isError.argtypes = [ctypes.c_size_t]
    lib.ZSTD_isError.restype = ctypes.c_uint
    lib.ZSTD_getErrorName.argtypes = [ctypes.c_size_t]
    lib.ZSTD_getErrorName.restype = ctypes.c_char_p
    lib.ZSTD_versionString.restype = ctypes.c_char_p
    return lib


def checked(lib, code):
    if lib.ZSTD_isError(code):
        raise RuntimeError("zstd: " + lib.ZSTD_getErrorName(code).decode())
    return code


def write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class Truncated(Exception):
    pass


def decompress_into(lib, src_fd, dst_fd, first=b""):
    """The daemon's zstd stream (`first`, then src_fd), decompressed into dst_fd until EOF."""
    dctx = lib.ZSTD_createDCtx()
    # The daemon's longest window (its high levels, src/ssh/zstd-codec.ts LONG_WINDOW_LOG): 128 MiB,
    # also zstd's default limit. A longer one is refused rather than held in memory.
    checked(lib, lib.ZSTD_DCtx_setParameter(dctx, ZSTD_D_WINDOW_LOG_MAX, 27))
    out = ctypes.create_string_buffer(CHUNK)
    # libzstd's last hint: 0 once a frame is complete. The daemon ends its stream with the frame's
    # end; EOF inside a frame means the stream was cut, and the command must not take it as whole.
    hint = 0
    while True:
        data, first = first or os.read(src_fd, CHUNK), b""
        if not data:
            if hint:
                raise Truncated("the daemon's zstd stream ended inside a frame (cut off); the command's input is incomplete")
            return
        src = ctypes.create_string_buffer(data, len(data))
        inb = InBuffer(ctypes.cast(src, ctypes.c_void_p), len(data), 0)
        while True:
            outb = OutBuffer(ctypes.cast(out, ctypes.c_void_p), CHUNK, 0)
            hint = checked(lib, lib.ZSTD_decompressStream(dctx, ctypes.byref(outb), ctypes.byref(inb)))
            if outb.pos:
                write_all(dst_fd, out.raw[: outb.pos])
            if inb.pos == inb.size and outb.pos < outb.size:
                break


# The adaptive level: src/ssh/zstd-adapt.ts has the reasons; these are its numbers.
EPOCH_BYTES = 1024 * 1024
WARM_UP_BYTES = 64 * 1024
LINK_BOUND = 0.25
LINK_WAITS_MOST = 0.75
BIG_STEP = 3
CODEC_ROOM = 0.3
CODEC_BOUND = 0.5
LINK_IDLE = 0.05
INCOMPRESSIBLE = 0.97
RAW_RETRY_EPOCHS = 16
LINK_FILL_BYTES = 4 * 1024 * 1024
# After the warm-up and on each retry out of pass-through, the first bytes at a level go as
# frames of their own, one per chunk (single-segment: the window is the chunk), and only if
# they compress does the level's streaming context (and its window in the daemon's decoder)
# follow; data that does not compress goes back to pass-through without ever costing a window.
# (The daemon's upload probes as far, in one-shot frames of its own size.)
PROBE_BYTES = 256 * 1024
TABLE_CAP_FROM_LEVEL = 6
RAW = "raw"


def step_level(level, by):
    """Levels up or down; zstd's level 0 means its default, so the levels go from -1 to 1."""
    index = (level - 1 if level > 0 else level) + by
    return index + 1 if index >= 0 else index


def codec_bound(epoch):
    """As codecBound in zstd-adapt.ts."""
    wall, codec, blocked, cpu_saturated = max(epoch[0], 1e-6), epoch[1], epoch[2], epoch[3]
    return (cpu_saturated or codec / wall >= CODEC_BOUND) and blocked / wall < LINK_IDLE


def counts_as_codec_bound(epoch, total_out):
    """As countsAsCodecBound in zstd-adapt.ts."""
    return codec_bound(epoch) and total_out >= LINK_FILL_BYTES


def next_setting(setting, epoch, policy, history):
    """As nextSetting in zstd-adapt.ts. epoch: (wall, codec, blocked, cpu_saturated, bytes_in, bytes_out) in
    seconds and bytes; policy: (start, min, max, adaptive); history: (raw epochs, incompressible, codec bound)."""
    start, lo, hi, adaptive = policy
    if not adaptive:
        return setting
    wall, codec, blocked, cpu_saturated, bytes_in, bytes_out = epoch
    wall = max(wall, 1e-6)
    link_bound = blocked / wall >= LINK_BOUND and codec / wall <= CODEC_ROOM
    if setting == RAW:
        return lo if (link_bound and not history[1]) or history[0] >= RAW_RETRY_EPOCHS else RAW
    if bytes_in > 0 and bytes_out / bytes_in >= INCOMPRESSIBLE:
        return RAW
    if link_bound:
        return min(step_level(setting, BIG_STEP if blocked / wall >= LINK_WAITS_MOST else 1), hi)
    if codec_bound(epoch) and history[2]:
        return max(step_level(setting, -1), lo) if setting > lo else RAW
    return setting


def adaptive_window_log(level):
    if level <= 0:
        return 17
    if level <= 2:
        return 18
    if level <= 5:
        return 19
    if level <= 9:
        return 20
    return LONG_WINDOW_LOG_ADAPTIVE


# From level 10: an 8 MiB window with long-distance matching (zstd-adapt.ts says why).
LONG_WINDOW_FROM_LEVEL_ADAPTIVE = 10
LONG_WINDOW_LOG_ADAPTIVE = 23
ZSTD_C_ENABLE_LONG_DISTANCE_MATCHING = 160


# Frames written by hand (src/ssh/zstd-frames.ts): pass-through frames of raw blocks, and reports.
RAW_FRAME_HEADER = b"\x28\xb5\x2f\xfd\x00" + bytes([((17 - 10) << 3) | 1])
RAW_FRAME_END = b"\x01\x00\x00"
MAX_BLOCK = 128 * 1024
SKIPPABLE_MAGIC = b"\x5f\x2a\x4d\x18"


def setting_json(setting):
    return '"raw"' if setting == RAW else str(setting)


class Encoder:
    """The command's stdout as one zstd stream of frames, at a fixed level or an adaptive one."""

    def __init__(self, lib, policy, dst_fd):
        self.lib, self.policy, self.fd = lib, policy, dst_fd
        self.adaptive = policy[3]
        self.cctx = None
        self.out = None
        self.setting = RAW if self.adaptive else policy[0]
        self.configured = False
        self.frame = None
        self.warming_up = self.adaptive
        self.probing = False
        self.probe_in = self.probe_out = 0
        self.frame_out = None
        self.raw_epochs, self.raw_incompressible, self.codec_bound = 0, False, False
        self.tally = {}
        self.total_in = self.total_out = 0
        self.new_epoch()

    def new_epoch(self):
        self.started = monotonic()
        self.codec = self.blocked = 0.0
        self.bytes_in = self.bytes_out = 0

    def emit(self, data):
        t0 = monotonic()
        write_all(self.fd, data)
        self.blocked += monotonic() - t0
        self.bytes_out += len(data)
        self.total_out += len(data)

    def context(self):
        lib = self.lib
        if self.cctx is None:
            self.cctx = lib.ZSTD_createCCtx()
            self.out = ctypes.create_string_buffer(CHUNK)
        if not self.configured:
            level = self.setting
            window = adaptive_window_log(level) if self.adaptive else WINDOW_LOG
            checked(lib, lib.ZSTD_CCtx_reset(self.cctx, ZSTD_RESET_SESSION_AND_PARAMETERS))
            checked(lib, lib.ZSTD_CCtx_setParameter(self.cctx, ZSTD_C_COMPRESSION_LEVEL, level))
            checked(lib, lib.ZSTD_CCtx_setParameter(self.cctx, ZSTD_C_WINDOW_LOG, window))
            if self.adaptive and level >= TABLE_CAP_FROM_LEVEL:
                checked(lib, lib.ZSTD_CCtx_setParameter(self.cctx, ZSTD_C_HASH_LOG, min(window - 2, 20)))
                checked(lib, lib.ZSTD_CCtx_setParameter(self.cctx, ZSTD_C_CHAIN_LOG, min(window - 2, 20)))
            if self.adaptive and level >= LONG_WINDOW_FROM_LEVEL_ADAPTIVE:
                checked(lib, lib.ZSTD_CCtx_setParameter(self.cctx, ZSTD_C_ENABLE_LONG_DISTANCE_MATCHING, 1))
            self.configured = True
        return self.cctx

    def compress(self, data, directive):
        cctx = self.context()
        self.frame = "zstd"
        lib, out = self.lib, self.out
        src = ctypes.create_string_buffer(data, len(data)) if data else None
        inb = InBuffer(ctypes.cast(src, ctypes.c_void_p) if src else None, len(data), 0)
        while True:
            outb = OutBuffer(ctypes.cast(out, ctypes.c_void_p), CHUNK, 0)
            t0 = monotonic()
            left = checked(lib, lib.ZSTD_compressStream2(cctx, ctypes.byref(outb), ctypes.byref(inb), directive))
            self.codec += monotonic() - t0
            if outb.pos:
                self.emit(out.raw[: outb.pos])
            if inb.pos == inb.size and (left == 0 if directive != ZSTD_E_CONTINUE else True):
                return

    def compress_frame(self, data):
        """`data` as one complete frame of its own (its size in the header, single-segment)."""
        cctx = self.context()
        lib = self.lib
        bound = lib.ZSTD_compressBound(len(data))
        if self.frame_out is None or len(self.frame_out) < bound:
            self.frame_out = ctypes.create_string_buffer(bound)
        t0 = monotonic()
        written = checked(lib, lib.ZSTD_compress2(cctx, self.frame_out, bound, data, len(data)))
        self.codec += monotonic() - t0
        self.emit(self.frame_out.raw[:written])
        self.probe_in += len(data)
        self.probe_out += written

    def push(self, data):
        if self.warming_up and self.total_in + len(data) > WARM_UP_BYTES:
            cut = WARM_UP_BYTES - self.total_in
            self.push(data[:cut])
            data = data[cut:]
        if self.setting == RAW:
            if self.frame is None:
                self.frame = RAW
                self.emit(RAW_FRAME_HEADER)
            for at in range(0, len(data), MAX_BLOCK):
                block = data[at : at + MAX_BLOCK]
                self.emit((len(block) << 3).to_bytes(3, "little") + block)
        elif self.probing:
            if data:
                self.compress_frame(data)
        else:
            self.compress(data, ZSTD_E_CONTINUE)
        self.bytes_in += len(data)
        self.total_in += len(data)
        self.tally[self.setting] = self.tally.get(self.setting, 0) + len(data)
        self.after_input()

    def flush(self):
        if self.frame == "zstd":
            self.compress(b"", ZSTD_E_FLUSH)

    def end(self):
        if self.frame is None and self.setting != RAW and not self.probing:
            self.frame = "zstd"  # an empty stream is one empty frame
        self.close_frame()
        if self.adaptive and not self.warming_up:  # a warm-up alone says nothing
            self.report()

    def close_frame(self):
        if self.frame == RAW:
            self.emit(RAW_FRAME_END)
        elif self.frame == "zstd":
            self.compress(b"", ZSTD_E_END)
        self.frame = None

    def after_input(self):
        if self.warming_up:
            if self.total_in >= WARM_UP_BYTES:
                self.warming_up = False
                self.switch_to(self.policy[0])
            return
        if self.probing and self.probe_in >= PROBE_BYTES:
            self.probing = False
            if self.probe_out / self.probe_in >= INCOMPRESSIBLE:
                self.raw_epochs, self.raw_incompressible = 0, True
                self.switch_to(RAW)
                return
        if self.bytes_in < EPOCH_BYTES:
            return
        # Unlike the daemon's, an epoch here is bytes only: what the relay's writes wait for is mostly
        # the daemon's client, a local store writing files, not the link, and epochs long enough to
        # average that out made the level climb where only the store was slow.
        epoch = (monotonic() - self.started, self.codec, self.blocked, False, self.bytes_in, self.bytes_out)
        nxt = next_setting(self.setting, epoch, self.policy, (self.raw_epochs, self.raw_incompressible, self.codec_bound))
        self.codec_bound = counts_as_codec_bound(epoch, self.total_out)
        if self.setting == RAW:
            self.raw_epochs += 1
        if nxt == RAW and self.setting != RAW:
            self.raw_epochs, self.raw_incompressible = 0, self.bytes_out / self.bytes_in >= INCOMPRESSIBLE
        if nxt != self.setting:
            self.switch_to(nxt)
        else:
            self.new_epoch()

    def switch_to(self, setting):
        self.close_frame()
        self.probing = self.adaptive and self.setting == RAW and setting != RAW
        self.probe_in = self.probe_out = 0
        self.setting = setting
        self.configured = False
        self.report()
        self.new_epoch()

    def settled(self):
        best, most = None, 0
        for setting, count in self.tally.items():
            counted = count - WARM_UP_BYTES if setting == RAW else count
            if counted > most:
                best, most = setting, counted
        return best

    def report(self):
        """A skippable frame (between frames) with the setting now, the one that carried most, and the counts."""
        settled = self.settled()
        payload = '{"final":%s,%s"in":%d,"out":%d}' % (
            setting_json(self.setting),
            "" if settled is None else '"settled":%s,' % setting_json(settled),
            self.total_in,
            self.total_out,
        )
        data = payload.encode()
        self.emit(SKIPPABLE_MAGIC + len(data).to_bytes(4, "little") + data)


def compress_into(lib, policy, src_fd, dst_fd):
    """src_fd compressed into dst_fd as one zstd stream, flushed whenever src_fd has nothing more to read."""
    encoder = Encoder(lib, policy, dst_fd)
    unflushed = 0
    while True:
        data = os.read(src_fd, CHUNK)
        if not data:
            encoder.end()
            return
        encoder.push(data)
        unflushed += len(data)
        more, _, _ = select.select([src_fd], [], [], 0)
        if not more or unflushed >= MAX_UNFLUSHED:
            encoder.flush()
            unflushed = 0


def spawn(command, stdin, stdout):
    """The command's pid, run without a shell on these pipes (posix_spawn: no fork of the interpreter)."""
    from _signal import SIGPIPE, SIGXFSZ  # the C module: signal imports enum

    # Python ignores SIGPIPE and SIGXFSZ; the command gets the defaults, as from a shell.
    actions = [(os.POSIX_SPAWN_DUP2, stdin, 0), (os.POSIX_SPAWN_DUP2, stdout, 1)]
    return os.posix_spawnp(command[0], command, os.environ, file_actions=actions, setsigdef=(SIGPIPE, SIGXFSZ))


def die_of_signal(number):
    """Dies of the command's signal, so that sshd reports it as the command's own."""
    import signal

    # KILL (the OOM killer's) and STOP can be neither caught nor reset: they need no reset.
    if number not in (signal.SIGKILL, signal.SIGSTOP):
        signal.signal(number, signal.SIG_DFL)
    sys.stderr.flush()
    os.kill(os.getpid(), number)


def parse_level(word, what="--level"):
    digits = word[1:] if word.startswith("-") else word
    if not (1 <= len(digits) <= 2 and digits.isascii() and digits.isdigit()) or not (-7 <= int(word) <= 19) or int(word) == 0:
        raise Refused("%s needs a level from -7 to 19 but 0" % what)
    return int(word)


def parse_options(args):
    """(start, min, max, adaptive) and the rest of the arguments."""
    level, bounds = 3, None
    while len(args) >= 2 and args[0] in ("--level", "--adapt"):
        if args[0] == "--level":
            level = parse_level(args[1])
        else:
            lo, sep, hi = args[1].partition(":")
            if not sep:
                raise Refused("--adapt needs MIN:MAX")
            bounds = (parse_level(lo, "--adapt"), parse_level(hi, "--adapt"))
            if bounds[0] > bounds[1]:
                raise Refused("--adapt needs MIN <= MAX")
        args = args[2:]
    if bounds is None:
        return (level, level, level, False), args
    return (min(max(level, bounds[0]), bounds[1]), bounds[0], bounds[1], True), args


# The longest first line a spare relay takes: its arguments, a Nix command and a store URI.
MAX_HEADER = 8192


def await_arguments(fd):
    """A spare relay's arguments (the first line on fd, a JSON array of strings) and the bytes after it;
    (None, b"") when the daemon let it go unused."""
    import json  # while the spare waits, not on a session's path

    data = b""
    while b"\n" not in data:
        chunk = os.read(fd, 4096)
        if not chunk:
            return None, b""
        data += chunk
        if len(data) > MAX_HEADER and b"\n" not in data[:MAX_HEADER]:
            raise Refused("the first line is too long")
    line, rest = data.split(b"\n", 1)
    try:
        words = json.loads(line)
    except ValueError:
        raise Refused("the first line is not a JSON array of arguments") from None
    if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
        raise Refused("the first line is not a JSON array of arguments")
    return words, rest


def main(args):
    first = b""
    if args == ["--await"]:
        load_zstd()  # loaded now, so that the session does not wait for it
        args, first = await_arguments(0)
        if args is None:
            return 0
    if args == ["--check"]:
        lib = load_zstd()
        # What this relay takes besides --level: --adapt and --await (src/ssh/zstd-relay.ts asks before it uses them).
        print("libzstd " + lib.ZSTD_versionString().decode() + " adapt await")
        return 0
    policy, args = parse_options(args)
    if not args or args[0] != "--":
        raise Refused("usage: nix-hcloud-builder-zstd-relay [--level N] [--adapt MIN:MAX] -- NIX-COMMAND…")
    command = check_nix_command(args[1:])
    lib = load_zstd()
    # Pipes are made close-on-exec; the spawn's dup2 gives the command its own 0 and 1.
    command_in, to_command = os.pipe()
    from_command, command_out = os.pipe()
    try:
        pid = spawn(command, command_in, command_out)
    except OSError as err:
        sys.stderr.write("nix-hcloud-builder-zstd-relay: cannot run %s: %s\n" % (command[0], err.strerror))
        return 127
    os.close(command_in)
    os.close(command_out)
    failures = []

    def up():
        try:
            decompress_into(lib, 0, to_command, first)
        except Exception as err:  # a corrupt stream, or the command gone: end its input
            if not isinstance(err, BrokenPipeError):
                failures.append(err)
        finally:
            os.close(to_command)

    _thread.start_new_thread(up, ())
    try:
        compress_into(lib, policy, from_command, 1)
    except BrokenPipeError:  # the daemon's end is gone
        import signal

        os.kill(pid, signal.SIGTERM)
    _, status = os.waitpid(pid, 0)
    # As subprocess reports it: the exit status, or minus the signal (os.waitstatus_to_exitcode is 3.9+).
    code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    for err in failures:
        sys.stderr.write("nix-hcloud-builder-zstd-relay: %s\n" % err)
    if code < 0:
        die_of_signal(-code)
    return code if not failures else (code or 1)


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except Refused as refused:
        sys.stderr.write("nix-hcloud-builder-zstd-relay: command refused (%s)\n" % refused)
        sys.exit(2)
