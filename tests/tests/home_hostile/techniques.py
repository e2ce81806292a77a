"""A hostile notebook user's ways past a home's hard limit, one per run.

    python3 techniques.py HOME QUOTA_BYTES TECHNIQUE

Run as the home's user inside the mounted home. Each technique tries to
store three times QUOTA_BYTES on the share and prints one line: the
technique, how it stopped ("EDQUOT" when the home refused it, "done" when
nothing did) and the bytes it believes it stored. The caller then looks at
what really landed on the share. `list` prints every technique.
"""
import errno, mmap, os, sys, threading

MIB = 1 << 20


def seed(p, n=4096):
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.write(fd, b"s" * n)
    os.close(fd)


def reader(p):
    """A reader holding the file open (a passthrough file where the home
    offers them), having read from it."""
    fd = os.open(p, os.O_RDONLY)
    os.read(fd, 4096)
    return fd


def write_all(fd, total, chunk=MIB):
    buf = b"x" * chunk
    done = 0
    while done < total:
        done += os.write(fd, buf)
    return done


def reader_then_writer(d, target):
    p = d + "/f"
    seed(p)
    r = reader(p)
    w = os.open(p, os.O_WRONLY)
    return write_all(w, target)


def reader_then_append(d, target):
    p = d + "/f"
    seed(p)
    r = reader(p)
    w = os.open(p, os.O_RDWR | os.O_APPEND)
    return write_all(w, target)


def reader_then_mmap_grow(d, target):
    """Grows the file one byte per MiB, dirtying each new MiB through a
    shared mapping."""
    p = d + "/f"
    seed(p)
    r = reader(p)
    w = os.open(p, os.O_RDWR)
    stored = 0
    for i in range(1, target // MIB + 1):
        os.pwrite(w, b"y", i * MIB)
        m = mmap.mmap(w, MIB, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=(i - 1) * MIB)
        m[:] = b"z" * MIB
        m.close()
        stored = i * MIB + 1
    return stored


def reader_then_splice(d, target):
    """splice(2) from a pipe into a writer that joined a reader."""
    p = d + "/f"
    seed(p)
    r = reader(p)
    w = os.open(p, os.O_WRONLY)
    rp, wp = os.pipe()
    stored = 0
    chunk = b"p" * 65536
    while stored < target:
        os.write(wp, chunk)
        n = 0
        while n < len(chunk):
            n += os.splice(rp, w, len(chunk) - n)
        stored += n
    return stored


def ftruncate_mmap(d, target):
    p = d + "/f"
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    os.ftruncate(fd, target)
    m = mmap.mmap(fd, target)
    for i in range(0, target, MIB):
        m[i:i + MIB] = b"m" * MIB
    m.close()
    return target


def fallocate(d, target):
    fd = os.open(d + "/f", os.O_RDWR | os.O_CREAT, 0o644)
    os.posix_fallocate(fd, 0, target)
    return target


def copy_file_range(d, target):
    seed(d + "/src", MIB)
    s = os.open(d + "/src", os.O_RDONLY)
    w = os.open(d + "/f", os.O_WRONLY | os.O_CREAT, 0o644)
    stored = 0
    while stored < target:
        stored += os.copy_file_range(s, w, MIB, 0, stored)
    return stored


def o_direct(d, target):
    fd = os.open(d + "/f", os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o644)
    buf = mmap.mmap(-1, MIB)  # page-aligned
    buf[:] = b"d" * MIB
    stored = 0
    while stored < target:
        stored += os.write(fd, buf)
    return stored


def parallel_writers(d, target):
    out = [0] * 4
    errs = []

    def one(i):
        try:
            fd = os.open(d + "/w%d" % i, os.O_WRONLY | os.O_CREAT, 0o644)
            out[i] = write_all(fd, target // 4, 256 * 1024)
        except OSError as e:
            errs.append(e)

    ts = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errs:
        raise errs[0]
    return sum(out)


def xattrs(d, target):
    """Data stored in user extended attributes: as much as one file takes,
    then one more file after another."""
    value = b"v" * 1000
    stored = 0
    seed(d + "/x", 0)
    try:
        for k in range(target // len(value)):
            os.setxattr(d + "/x", "user.k%d" % k, value)
            stored += len(value)
    except OSError as e:
        print("one file:", errno.errorcode.get(e.errno), stored)
    i = 0
    while stored < target:
        p = "%s/x%d" % (d, i)
        seed(p, 0)
        for k in range(3):
            os.setxattr(p, "user.k%d" % k, value)
            stored += len(value)
        i += 1
    return stored


TECHNIQUES = {
    "reader-then-writer": reader_then_writer,
    "reader-then-append": reader_then_append,
    "reader-then-mmap-grow": reader_then_mmap_grow,
    "reader-then-splice": reader_then_splice,
    "ftruncate-mmap": ftruncate_mmap,
    "fallocate": fallocate,
    "copy_file_range": copy_file_range,
    "o-direct": o_direct,
    "parallel-writers": parallel_writers,
    "xattrs": xattrs,
}

if sys.argv[1] == "list":
    print("\n".join(TECHNIQUES))
    sys.exit(0)
home, quota, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
os.makedirs(home + "/" + name, exist_ok=True)
try:
    stored = TECHNIQUES[name](home + "/" + name, 3 * quota)
    how = "done"
except OSError as e:
    stored = -1
    how = errno.errorcode.get(e.errno, str(e.errno))
print(name, how, stored)
