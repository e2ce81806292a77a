//! The CSI Identity service: who we are and whether we are ready.

use std::collections::HashMap;

use hubfs_proto::csi::{
    identity_server::Identity, plugin_capability, GetPluginCapabilitiesRequest,
    GetPluginCapabilitiesResponse, GetPluginInfoRequest, GetPluginInfoResponse, PluginCapability,
    ProbeRequest, ProbeResponse,
};
use tonic::{Request, Response, Status};

/// Identity service state: the driver name is configurable so two installs
/// can live in one cluster.
#[derive(Clone, Debug)]
pub struct IdentityService {
    pub driver_name: String,
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn get_plugin_info(
        &self,
        _: Request<GetPluginInfoRequest>,
    ) -> Result<Response<GetPluginInfoResponse>, Status> {
        Ok(Response::new(GetPluginInfoResponse {
            name: self.driver_name.clone(),
            vendor_version: crate::VERSION.to_owned(),
            manifest: HashMap::from([(
                "url".to_owned(),
                "https://github.com/hubfs/hubfs".to_owned(),
            )]),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _: Request<GetPluginCapabilitiesRequest>,
    ) -> Result<Response<GetPluginCapabilitiesResponse>, Status> {
        use plugin_capability::{service, volume_expansion, Service, Type, VolumeExpansion};
        Ok(Response::new(GetPluginCapabilitiesResponse {
            capabilities: vec![
                PluginCapability {
                    r#type: Some(Type::Service(Service {
                        r#type: service::Type::ControllerService as i32,
                    })),
                },
                // A quota change needs no unmount: the home stays mounted.
                PluginCapability {
                    r#type: Some(Type::VolumeExpansion(VolumeExpansion {
                        r#type: volume_expansion::Type::Online as i32,
                    })),
                },
            ],
        }))
    }

    async fn probe(&self, _: Request<ProbeRequest>) -> Result<Response<ProbeResponse>, Status> {
        Ok(Response::new(ProbeResponse { ready: Some(true) }))
    }
}

/// Whether `name` is a valid CSI driver name.
pub fn valid_driver_name(name: &str) -> bool {
    let b = name.as_bytes();
    (2..=63).contains(&b.len())
        && b[0].is_ascii_alphabetic()
        && b[b.len() - 1].is_ascii_alphabetic()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"-._".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn driver_names_follow_the_csi_pattern() {
        assert!(valid_driver_name(crate::DEFAULT_DRIVER_NAME));
        assert!(valid_driver_name("ab"));
        assert!(!valid_driver_name("a"));
        assert!(!valid_driver_name("1hubfs.org"));
        assert!(!valid_driver_name("hubfs.org1"));
        assert!(!valid_driver_name("hub fs"));
        assert!(!valid_driver_name(&"a".repeat(64)));
    }

    #[tokio::test]
    async fn reports_name_capabilities_and_readiness() {
        let s = IdentityService {
            driver_name: "x.y".into(),
        };
        let info = s
            .get_plugin_info(Request::new(GetPluginInfoRequest {}))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(info.name, "x.y");
        assert_eq!(info.vendor_version, crate::VERSION);
        let caps = s
            .get_plugin_capabilities(Request::new(GetPluginCapabilitiesRequest {}))
            .await
            .unwrap()
            .into_inner();
        assert!(caps.capabilities.iter().any(|c| matches!(&c.r#type,
            Some(plugin_capability::Type::Service(s)) if s.r#type == plugin_capability::service::Type::ControllerService as i32)));
        assert_eq!(
            s.probe(Request::new(ProbeRequest {}))
                .await
                .unwrap()
                .into_inner()
                .ready,
            Some(true)
        );
    }
}
