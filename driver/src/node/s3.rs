//! Node side of S3 volumes (static PVs with `type: s3` volume attributes).
//!
//! The native S3 filesystem lands in `fuse-fs`; until the node integration is
//! wired, publishing an S3 volume is refused with a clear message instead of
//! producing an empty directory the notebook would mistake for a bucket.

use std::path::Path;

use hubfs_proto::csi::{NodePublishVolumeRequest, NodeStageVolumeRequest};

use super::NodeService;
use crate::error::{DriverError, Result};

fn not_yet() -> DriverError {
    DriverError::FailedPrecondition(
        "S3 volumes are not supported by this node yet: the S3 filesystem is not part of this build".into(),
    )
}

pub(super) fn stage(_node: &NodeService, _r: &NodeStageVolumeRequest, _staging: &Path) -> Result<()> {
    Err(not_yet())
}

pub(super) fn publish(
    _node: &NodeService,
    _r: &NodePublishVolumeRequest,
    _target: &Path,
    _ro: bool,
) -> Result<Option<String>> {
    Err(not_yet())
}
