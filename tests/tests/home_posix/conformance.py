"""POSIX behaviour probe: run as an unprivileged user inside DIR; prints one
line per check (result or errno name). The home layer must print exactly
what the native directory prints."""
import ctypes, errno, os, stat, sys, time

d = sys.argv[1]
os.chdir(d)
libc = ctypes.CDLL(None, use_errno=True)


def check(name, fn):
    try:
        r = fn()
        print(f"{name}: ok {'' if r is None else r}")
    except OSError as e:
        print(f"{name}: {errno.errorcode.get(e.errno, e.errno)}")


def renameat2(a, b, flags):
    AT_FDCWD = -100
    if libc.renameat2(AT_FDCWD, a.encode(), AT_FDCWD, b.encode(), flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def mode(p):
    return oct(stat.S_IMODE(os.lstat(p).st_mode))


def write(p, data, flags=os.O_WRONLY | os.O_CREAT | os.O_TRUNC, m=0o644):
    fd = os.open(p, flags, m)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def read(p):
    with open(p, "rb") as f:
        return f.read()


os.umask(0o022)
check("create-mode", lambda: (write("f", b"hello", m=0o640), mode("f"))[1])
check("create-excl", lambda: os.open("f", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
check("open-missing", lambda: os.open("missing", os.O_RDONLY))
check("read-back", lambda: read("f"))
check("append", lambda: (write("f", b"!", os.O_WRONLY | os.O_APPEND), read("f"))[1])
check("pwrite-sparse", lambda: (lambda fd: (os.pwrite(fd, b"x", 100000), os.close(fd), os.stat("f").st_size)[2])(os.open("f", os.O_WRONLY)))
check("truncate-shrink", lambda: (os.truncate("f", 3), read("f"))[1])
check("truncate-grow", lambda: (os.truncate("f", 4096), os.stat("f").st_size)[1])
check("o-trunc", lambda: (os.close(os.open("f", os.O_WRONLY | os.O_TRUNC)), os.stat("f").st_size)[1])
check("mkdir", lambda: (os.mkdir("d", 0o750), mode("d"))[1])
check("mkdir-exists", lambda: os.mkdir("d"))
check("mkdir-in-file", lambda: os.mkdir("f/x"))
check("file-in-dir", lambda: write("d/inner", b"i"))
check("rmdir-nonempty", lambda: os.rmdir("d"))
check("unlink-dir", lambda: os.unlink("d"))
check("rmdir-file", lambda: os.rmdir("f"))
check("mkdir-e", lambda: os.mkdir("e"))
check("rename-file-over-dir", lambda: os.rename("f", "e"))
check("rename-dir-over-nonempty", lambda: os.rename("e", "d"))
check("rename-dir-into-self", lambda: os.rename("d", "d/sub"))
check("rename-dir-over-empty", lambda: (os.mkdir("e2"), os.rename("e2", "e"), sorted(os.listdir(".")))[2])
check("rename-self", lambda: os.rename("f", "f"))
check("rename-over-file", lambda: (write("g", b"gg"), os.rename("g", "f"), read("f"))[2])
check("noreplace", lambda: (write("h", b"h"), renameat2("h", "f", 1))[1])
check("exchange", lambda: (renameat2("h", "f", 2), read("f"), read("h"))[1:])
check("link", lambda: (os.link("f", "f2"), os.stat("f").st_nlink)[1])
check("link-exists", lambda: os.link("f", "f2"))
check("link-dir", lambda: os.link("d", "d2"))
check("unlink-link", lambda: (os.unlink("f2"), os.stat("f").st_nlink)[1])
check("symlink", lambda: (os.symlink("f", "s"), os.readlink("s"), stat.S_ISLNK(os.lstat("s").st_mode), os.stat("s").st_size)[1:])
check("symlink-dangling", lambda: (os.symlink("nowhere", "s2"), os.path.exists("s2"), os.path.lexists("s2"))[1:])
check("symlink-exists", lambda: os.symlink("x", "s"))
check("readlink-file", lambda: os.readlink("f"))
check("chmod", lambda: (os.chmod("f", 0o600), mode("f"))[1])
check("chmod-setgid-dir", lambda: (os.chmod("d", 0o2750), mode("d"))[1])
check("chown-root", lambda: os.chown("f", 0, -1))
check("chown-self", lambda: (os.chown("f", os.getuid(), os.getgid()), os.stat("f").st_uid == os.getuid())[1])
check("chgrp-other", lambda: os.chown("f", -1, 0))
check("utime", lambda: (os.utime("f", (1000000000, 1000000001)), int(os.stat("f").st_atime), int(os.stat("f").st_mtime))[1:])
check("utime-ns", lambda: (os.utime("f", ns=(5, 1500000000123456789)), os.stat("f").st_mtime_ns)[1])
check("mtime-after-write", lambda: (os.utime("f", (1, 1)), write("f", b"new", os.O_WRONLY), os.stat("f").st_mtime > 1)[2])
check("ctime-after-chmod", lambda: (lambda c: (time.sleep(0.01), os.chmod("f", 0o644), os.stat("f").st_ctime_ns > c)[2])(os.stat("f").st_ctime_ns))
check("fifo", lambda: (os.mkfifo("p", 0o600), stat.S_ISFIFO(os.lstat("p").st_mode), mode("p"))[1:])
check("xattr-set-get", lambda: (os.setxattr("f", "user.k", b"v"), os.getxattr("f", "user.k"))[1])
check("xattr-list", lambda: sorted(x for x in os.listxattr("f") if x.startswith("user.")))
check("xattr-missing", lambda: os.getxattr("f", "user.none"))
check("xattr-create-exists", lambda: os.setxattr("f", "user.k", b"w", os.XATTR_CREATE))
check("xattr-remove", lambda: (os.removexattr("f", "user.k"), os.listxattr("f"))[1])
check("xattr-trusted", lambda: os.setxattr("f", "trusted.k", b"v"))
check("fallocate", lambda: (lambda fd: (os.posix_fallocate(fd, 0, 65536), os.close(fd), os.stat("f").st_size)[2])(os.open("f", os.O_RDWR)))
check("copy-file-range", lambda: (write("c1", b"copy me"), (lambda a, b: (os.copy_file_range(a, b, 7), os.close(a), os.close(b)))(os.open("c1", os.O_RDONLY), os.open("c2", os.O_WRONLY | os.O_CREAT, 0o644)), read("c2"))[2])
check("name-too-long", lambda: write("n" * 300, b""))
check("unlinked-open-file", lambda: (lambda fd: (os.unlink("c1"), os.lseek(fd, 0, 0), os.read(fd, 4), os.close(fd))[2])(os.open("c1", os.O_RDONLY)))
check("no-read-perm", lambda: (write("secret", b"s", m=0o644), os.chmod("secret", 0), read("secret"))[2])
check("no-write-perm", lambda: (os.chmod("secret", 0o444), write("secret", b"x", os.O_WRONLY))[1])
check("dir-no-exec", lambda: (os.chmod("d", 0o600), os.stat("d/inner"))[1])
check("dir-no-write", lambda: (os.chmod("d", 0o500), write("d/new", b""))[1])
check("dir-restore", lambda: (os.chmod("d", 0o755), os.path.exists("d/inner"))[1])
check("readdir", lambda: sorted(os.listdir(".")))
check("readdir-types", lambda: sorted((e.name, e.is_dir(), e.is_symlink()) for e in os.scandir(".")))
check("statvfs-namemax", lambda: os.statvfs(".").f_namemax)
check("sizes", lambda: sorted((n, os.lstat(n).st_size) for n in os.listdir(".") if not os.path.isdir(n) and not os.path.islink(n)))
check("rmdir-all", lambda: (os.unlink("d/inner"), os.rmdir("d"), os.rmdir("e"), os.path.exists("d"))[3])
