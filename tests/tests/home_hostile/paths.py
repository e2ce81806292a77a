"""A hostile notebook user's names, paths and races, one per run.

    python3 paths.py HOME WHAT [OUTSIDE]

Run as the home's user inside a mounted home; prints what it saw, one line
per check, so the caller can compare a native directory with the home and
look at what changed outside.
"""
import errno, os, sys, threading, time

home, what = sys.argv[1], sys.argv[2]
outside = sys.argv[3] if len(sys.argv) > 3 else None
os.chdir(home)


def err(f, *a):
    try:
        r = f(*a)
        return "ok" if r is None else r
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))


if what == "names":
    # Every byte but NUL and '/', in a name of its own and inside one.
    made = []
    for b in range(1, 256):
        if b == ord("/"):
            continue
        for name in (bytes([b]), b"x" + bytes([b]) + b"y"):
            if name in (b".", b".."):
                continue
            fd = os.open(name, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644)
            os.write(fd, name)
            os.close(fd)
            made.append(name)
    longest = bytes(range(1, 256)).replace(b"/", b"_")[:255]
    with open(longest, "wb") as f:
        f.write(b"long")
    made.append(longest)
    listed = set(os.listdir(b"."))
    print("made", len(made), "listed", len(listed), "same", listed == set(made))
    print("contents", all(open(n, "rb").read() == (b"long" if n == longest else n) for n in made))
    print("too long", err(os.open, longest + b"z", os.O_CREAT | os.O_WRONLY, 0o644))
    for n in made:
        os.unlink(n)
    print("left", os.listdir(b"."))

elif what == "deep":
    # Directories nested until the path from here passes PATH_MAX, made
    # and used relative to descriptors (as a walk by absolute path fails).
    comp = b"d" * 200
    fds = [os.open(b".", os.O_RDONLY | os.O_DIRECTORY)]
    depth = 0
    while depth * (len(comp) + 1) < 4096 + 512:
        os.mkdir(comp, 0o755, dir_fd=fds[-1])
        fds.append(os.open(comp, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fds[-1]))
        depth += 1
    fd = os.open(b"bottom", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fds[-1])
    os.write(fd, b"deep" * 1000)
    os.close(fd)
    st = os.stat(b"bottom", dir_fd=fds[-1])
    print("depth", depth, "path bytes", depth * (len(comp) + 1), "size", st.st_size)
    # A path just under PATH_MAX from here, and one past it.
    print("4019-byte path", err(lambda: os.stat(b"/".join([comp] * 20)) and None))
    print("past PATH_MAX", err(os.stat, b"/".join([comp] * 21) + b"/bottom"))
    with open(os.open(b"bottom", os.O_RDONLY, dir_fd=fds[-1]), "rb") as f:
        print("read back", f.read() == b"deep" * 1000)
    # Removed bottom up, relative again.
    os.unlink(b"bottom", dir_fd=fds[-1])
    for i in range(depth, 0, -1):
        os.close(fds[i])
        os.rmdir(comp, dir_fd=fds[i - 1])
    print("left", os.listdir(b"."))

elif what == "swap":
    # A directory swapped for a symlink to OUTSIDE (and to /etc) between
    # the kernel's lookup and the create, by a second thread, many times;
    # the creating thread writes through whatever the path is at that
    # moment. Nothing may land outside the home.
    stop = time.time() + float(sys.argv[4] if len(sys.argv) > 4 else 3)
    os.mkdir("d")
    counts = {"made": 0, "refused": 0}

    def swapper():
        i = 0
        while time.time() < stop:
            target = outside if i % 2 else "/etc"
            try:
                os.rename("d", "d.real")
                os.symlink(target, "d")
                os.rename("d", "d.link")
                os.rename("d.real", "d")
                os.unlink("d.link")
            except OSError:
                pass
            i += 1

    def creator():
        i = 0
        while time.time() < stop:
            for p in ("d/f%d" % i, "d/passwd", "d/shadow"):
                try:
                    fd = os.open(p, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o644)
                    os.write(fd, b"pwned\n")
                    os.close(fd)
                    counts["made"] += 1
                except OSError:
                    counts["refused"] += 1
            try:
                os.listdir("d")
                os.stat("d/f0")
            except OSError:
                pass
            i += 1

    ts = [threading.Thread(target=swapper), threading.Thread(target=creator), threading.Thread(target=creator)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    print("made", counts["made"] > 0, "refused", counts["refused"] > 0)

elif what == "races":
    # Renames, links, unlinks and writes of the same few names from four
    # threads at once (as fsstress does), until the time is up.
    stop = time.time() + float(sys.argv[3] if len(sys.argv) > 3 else 3)
    names = ["a", "b", "c", "sub/a", "sub/b", "sub2"]
    os.mkdir("sub")

    def worker(seed):
        import random
        r = random.Random(seed)
        while time.time() < stop:
            a, b = r.choice(names), r.choice(names)
            op = r.randrange(7)
            try:
                if op == 0:
                    with open(a, "ab") as f:
                        f.write(b"x" * r.randrange(1, 70000))
                elif op == 1:
                    os.rename(a, b)
                elif op == 2:
                    os.link(a, b)
                elif op == 3:
                    os.unlink(a)
                elif op == 4:
                    os.truncate(a, r.randrange(0, 100000))
                elif op == 5:
                    os.mkdir(a)
                else:
                    os.rmdir(a)
            except OSError:
                pass

    ts = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    print("done")
