//! Meshes the lab and the tests share.

use std::net::Ipv4Addr;

use anyhow::Result;

use crate::bed::TestBed;
use crate::pod::Pod;

/// The address of the guide's `reviews` service in [`reviews_behind_waypoint`].
pub const REVIEWS_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 30);

/// The guide's bookinfo `reviews` in namespace `default` (where its YAML lands when applied
/// without a namespace): v1 on node 2, v2 on node 1, service account `reviews`, labelled
/// `app: reviews` and `version: v1|v2`, behind the `reviews-waypoint` (on node 2).
pub struct ReviewsBehindWaypoint {
    /// `reviews-v1`.
    pub v1: Pod,
    /// `reviews-v2`.
    pub v2: Pod,
    /// The waypoint's pod.
    pub waypoint: Pod,
}

/// Adds [`ReviewsBehindWaypoint`] to a bed that is not started yet (nodes 0 and 1).
pub fn reviews_behind_waypoint(bed: &mut TestBed) -> Result<ReviewsBehindWaypoint> {
    let version = |bed: &mut TestBed, v: &str, node| {
        bed.pod(&format!("reviews-{v}"))
            .namespace("default")
            .service_account("reviews")
            .label("app", "reviews")
            .label("version", v)
            .on_node(node)
            .add()
    };
    let v1 = version(bed, "v1", 1)?;
    let v2 = version(bed, "v2", 0)?;
    let waypoint = bed.waypoint("reviews-waypoint", "default", 1)?;
    bed.service("reviews", "default", REVIEWS_VIP, 9080, 8080, &[&v1, &v2]);
    bed.use_waypoint("default", "reviews", Some("reviews-waypoint"))?;
    Ok(ReviewsBehindWaypoint { v1, v2, waypoint })
}
