//! Detaching a FUSE server from the shell that started it, shared by
//! `hubfs mount s3` and `hubfs mount home`.

use std::io::{Read, Write};
use std::process::ExitCode;

use anyhow::{bail, Context};

/// Forks; the child runs `serve`, which calls its argument once the mount
/// answers: that tells the parent (through a pipe) to exit successfully and
/// detaches the child from the terminal.
pub fn daemonize(
    serve: impl FnOnce(Box<dyn FnOnce()>) -> anyhow::Result<()>,
) -> anyhow::Result<ExitCode> {
    use nix::unistd::{fork, pipe, setsid, ForkResult};
    let (rx, tx) = pipe().context("pipe")?;
    // SAFETY: no other thread exists yet; the child only continues with
    // ordinary Rust code and creates its own runtime and threads.
    match unsafe { fork() }.context("fork")? {
        ForkResult::Parent { .. } => {
            drop(tx);
            let mut rx = std::fs::File::from(rx);
            let mut byte = [0u8; 1];
            match rx.read(&mut byte) {
                Ok(1) => Ok(ExitCode::SUCCESS),
                _ => bail!("mount failed (see the error above)"),
            }
        }
        ForkResult::Child => {
            drop(rx);
            let _ = setsid();
            let mut tx = std::fs::File::from(tx);
            serve(Box::new(move || {
                let _ = tx.write_all(&[1]);
                // Detach from the terminal once mounted.
                if let Ok(null) = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open("/dev/null")
                {
                    use std::os::fd::AsRawFd;
                    // SAFETY: dup2 onto the standard descriptors of this process.
                    unsafe {
                        libc::dup2(null.as_raw_fd(), 0);
                        libc::dup2(null.as_raw_fd(), 1);
                    }
                }
            }))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
