"""One of a hostile user's processes in a random mix of techniques.

    python3 mix.py HOME

Run as the home's user. Reads one step a line on stdin, "TECHNIQUE FILE
SIZE", runs it on HOME/fFILE (a small namespace the other processes share,
so they collide), and prints one line: the technique and how it ended
("ok", or the errno's name). What a step opens for reading stays open
(a passthrough reader others' writers join, an orphan once unlinked)
until a "close" step or the end of input. Every write of a step reaches
the daemon before its line is printed (mappings are synced, writers
closed), so the share can be checked between steps.
"""
import errno, mmap, os, sys

KIB = 1024
FILES = 4
CHUNK = 256 * KIB
held = []  # readers kept open


def path(i):
    return "%s/f%d" % (HOME, i % FILES)


def size_of(fd):
    return os.fstat(fd).st_size


def up(n, to=4096):
    return (n + to - 1) // to * to


def reader(p):
    fd = os.open(p, os.O_RDONLY)
    os.read(fd, 4096)
    held.append(fd)


def writer(p, flags=os.O_WRONLY):
    """A writer joining a reader of the same file (the file made first)."""
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    os.close(fd)
    reader(p)
    return os.open(p, flags)


def write_at(fd, off, size):
    done = 0
    while done < size:
        done += os.pwrite(fd, b"x" * min(CHUNK, size - done), off + done)


def reader_then_writer(p, size):
    w = writer(p)
    try:
        write_at(w, size_of(w), size)
    finally:
        os.close(w)


def reader_then_append(p, size):
    w = writer(p, os.O_RDWR | os.O_APPEND)
    try:
        done = 0
        while done < size:
            done += os.write(w, b"a" * min(CHUNK, size - done))
    finally:
        os.close(w)


def reader_then_mmap_grow(p, size):
    """Grows the file a byte past each new chunk, then dirties the chunk
    through a shared mapping."""
    w = writer(p, os.O_RDWR)
    try:
        at = up(size_of(w))
        for k in range(max(1, size // CHUNK)):
            off = at + k * CHUNK
            os.pwrite(w, b"y", off + CHUNK)
            m = mmap.mmap(w, CHUNK, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=off)
            try:
                m[:] = b"z" * CHUNK
                m.flush()
            finally:
                m.close()
    finally:
        os.close(w)


def reader_then_splice(p, size):
    w = writer(p)
    rp, wp = os.pipe()
    try:
        os.lseek(w, 0, os.SEEK_END)
        done = 0
        while done < size:
            n = min(65536, size - done)
            os.write(wp, b"p" * n)
            while n:
                k = os.splice(rp, w, n)
                n -= k
                done += k
    finally:
        for fd in (w, rp, wp):
            os.close(fd)


def ftruncate_mmap(p, size):
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        at = up(size_of(fd))
        os.ftruncate(fd, at + max(size, 1))
        m = mmap.mmap(fd, max(size, 1), offset=at)
        try:
            m[:] = b"m" * max(size, 1)
            m.flush()
        finally:
            m.close()
    finally:
        os.close(fd)


def fallocate(p, size):
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.posix_fallocate(fd, size_of(fd), max(size, 1))
    finally:
        os.close(fd)


def copy_file_range(p, size):
    src = os.open(p + ".src", os.O_RDWR | os.O_CREAT, 0o644)
    w = os.open(p, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        if size_of(src) < CHUNK:
            write_at(src, 0, CHUNK)
        at, done = size_of(w), 0
        while done < size:
            n = os.copy_file_range(src, w, min(CHUNK, size - done), 0, at + done)
            if n == 0:
                break
            done += n
    finally:
        os.close(src)
        os.close(w)


def o_direct(p, size):
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o644)
    buf = mmap.mmap(-1, 64 * KIB)  # page-aligned
    buf[:] = b"d" * (64 * KIB)
    try:
        at, done = up(size_of(fd)), 0
        while done < size:
            done += os.pwrite(fd, buf, at + done)
    finally:
        os.close(fd)


def xattrs(p, size):
    if not os.path.exists(p):
        os.close(os.open(p, os.O_WRONLY | os.O_CREAT, 0o644))
    value = b"v" * 1000
    for k in range(min(16, max(1, size // len(value)))):
        os.setxattr(p, "user.k%d.%d" % (os.getpid(), k), value)


def shrink(p, size):
    fd = os.open(p, os.O_WRONLY)
    try:
        os.ftruncate(fd, size_of(fd) // 2)
    finally:
        os.close(fd)


def unlink(p, size):
    os.unlink(p)


def rename(p, size):
    os.rename(p, path(int(p.rsplit("f", 1)[1]) + 1 + size % (FILES - 1)))


def link(p, size):
    os.link(p, path(int(p.rsplit("f", 1)[1]) + 1 + size % (FILES - 1)))


def close(p, size):
    while held:
        os.close(held.pop())


TECHNIQUES = {
    "reader-then-writer": reader_then_writer,
    "reader-then-append": reader_then_append,
    "reader-then-mmap-grow": reader_then_mmap_grow,
    "reader-then-splice": reader_then_splice,
    "ftruncate-mmap": ftruncate_mmap,
    "fallocate": fallocate,
    "copy_file_range": copy_file_range,
    "o-direct": o_direct,
    "xattrs": xattrs,
    "shrink": shrink,
    "unlink": unlink,
    "rename": rename,
    "link": link,
    "close": close,
}

HOME = sys.argv[1]
if HOME == "list":
    print("\n".join(TECHNIQUES))
    sys.exit(0)
for line in sys.stdin:
    name, i, size = line.split()
    try:
        TECHNIQUES[name](path(int(i)), int(size))
        how = "ok"
    except OSError as e:
        how = errno.errorcode.get(e.errno, str(e.errno))
    print(name, how, flush=True)
close(None, 0)
