//! The lab's sample: bookinfo's services in the ambient namespace `shop`, a pod outside the
//! mesh, and the guide's VirtualService on `reviews` behind a waypoint in `default`.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{Context, Result};
use weft_testbed::fixtures::{REVIEWS_VIP, ReviewsBehindWaypoint, reviews_behind_waypoint};
use weft_testbed::{Pod, TestBed, metric_sum};

use super::scenario::{Scenario, answer, apply};

struct Svc {
    name: &'static str,
    vip: Ipv4Addr,
    pod: Pod,
}

/// The sample: bookinfo's services in the ambient namespace `shop`, a pod outside the mesh,
/// and the guide's VirtualService on `reviews` behind a waypoint in `default`.
pub(super) fn sample(bed: &mut TestBed, requests: u32) -> Result<Scenario> {
    let productpage = bed
        .pod("productpage")
        .namespace("shop")
        .service_account("bookinfo-productpage")
        .on_node(0)
        .add()?;
    let details = bed
        .pod("details-v1")
        .namespace("shop")
        .service_account("details")
        .on_node(0)
        .add()?;
    let reviews = bed
        .pod("reviews-v1")
        .namespace("shop")
        .service_account("reviews")
        .on_node(1)
        .add()?;
    let ratings = bed
        .pod("ratings-v1")
        .namespace("shop")
        .service_account("ratings")
        .on_node(1)
        .add()?;
    let legacy = bed
        .pod("legacy")
        .namespace("legacy")
        .on_node(1)
        .not_enrolled()
        .add()?;
    // L7: the guide's bookinfo reviews, v1 and v2, behind a waypoint, in `default` (where the
    // guide's YAML lands when applied without a namespace).
    let ReviewsBehindWaypoint {
        v1: l7_v1,
        v2: l7_v2,
        waypoint,
    } = reviews_behind_waypoint(bed)?;
    let services = [
        Svc {
            name: "details",
            vip: Ipv4Addr::new(10, 96, 0, 20),
            pod: details,
        },
        Svc {
            name: "reviews",
            vip: Ipv4Addr::new(10, 96, 0, 21),
            pod: reviews,
        },
        Svc {
            name: "ratings",
            vip: Ipv4Addr::new(10, 96, 0, 22),
            pod: ratings,
        },
    ];
    for svc in &services {
        bed.service(svc.name, "shop", svc.vip, 9080, 8080, &[&svc.pod]);
    }
    bed.start().context("starting the node proxies")?;
    bed.serve_testsrv(&l7_v1, "reviews-v1")?;
    bed.serve_testsrv(&l7_v2, "reviews-v2")?;
    let before = bed.waypoint_updates(&waypoint);
    apply(bed, "istio-traffic-management.yaml", GUIDE_TRAFFIC)?;
    for svc in &services {
        let body = format!(
            "{{\"service\":\"{}\",\"pod\":\"{}\"}}\n",
            svc.name, svc.pod.name
        );
        bed.serve_http(&svc.pod, 8080, &[("index.html", &body)])?;
    }
    // The waypoint says when it has the VirtualService (through an API server, a watch event
    // later than a file).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while bed.waypoint_updates(&waypoint) <= before && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    print!("{}", bed.describe());

    println!(
        "\nTraffic: productpage -> details, reviews, ratings ({} requests each, by service VIP)",
        requests
    );
    let mut failures = 0;
    for svc in &services {
        for _ in 0..requests {
            let (ok, _, err) = bed.curl(&productpage, &format!("http://{}:9080/", svc.vip))?;
            if !ok {
                failures += 1;
                eprintln!("  request to {} failed: {}", svc.name, err.trim());
            }
        }
    }
    let (legacy_ok, _, _) = bed.curl(&legacy, &format!("http://{}:8080/", services[1].pod.ip))?;
    println!(
        "Traffic: legacy (outside the mesh) -> reviews-v1 in plaintext: {}",
        if legacy_ok {
            "ALLOWED (unexpected!)"
        } else {
            "refused (STRICT mTLS)"
        }
    );

    // L7 through the waypoint: the guide's VirtualService sends end-user: jason to v2.
    std::thread::sleep(Duration::from_millis(300));
    let url = format!("http://{REVIEWS_VIP}:9080/reviews/1");
    let mut answers: BTreeMap<(&str, String), u32> = BTreeMap::new();
    for (who, header) in [
        ("jason", "end-user: jason"),
        ("anyone else", "end-user: alice"),
    ] {
        for _ in 0..requests {
            let out = bed.exec(
                &productpage,
                &["curl", "-sS", "--max-time", "5", "-H", header, &url],
            )?;
            let body = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            *answers.entry((who, body)).or_default() += 1;
        }
    }
    println!(
        "\nL7: productpage -> reviews.default through reviews-waypoint, with the guide's \
         VirtualService (end-user: jason -> v2, the rest -> v1):"
    );
    for ((who, body), n) in &answers {
        println!("  as {who}: {n} answered by {body}");
    }
    let l7_ok = answers.get(&("jason", "reviews-v2".to_owned())) == Some(&requests)
        && answers.get(&("anyone else", "reviews-v1".to_owned())) == Some(&requests);
    let waypoint_metrics = bed.waypoint_metrics(&waypoint)?;
    println!(
        "  the waypoint counted {} requests (weft_requests_total, reporter=waypoint)",
        metric_sum(
            &waypoint_metrics,
            "weft_requests_total",
            &[("reporter", "waypoint")]
        )
    );
    let mut problems = Vec::new();
    if failures > 0 {
        problems.push(format!("{failures} requests failed"));
    }
    if legacy_ok {
        problems.push("plaintext from outside the mesh reached an enrolled pod".to_owned());
    }
    if !l7_ok {
        problems.push("the waypoint did not route as the VirtualService says".to_owned());
    }
    let shop: Vec<(&'static str, String)> = services
        .iter()
        .map(|s| (s.name, format!("http://{}:9080/", s.vip)))
        .collect();
    let client = productpage.clone();
    let probe = move |bed: &TestBed| {
        let ask = |url: &str, header: Option<&str>| {
            answer(bed, &client, url, header).unwrap_or_else(|e| e.to_string())
        };
        let code = |a: String| a.split_whitespace().next().unwrap_or("?").to_owned();
        let shop: Vec<String> = shop
            .iter()
            .map(|(name, url)| format!("{name} {}", code(ask(url, None))))
            .collect();
        format!(
            "shop: {} · reviews.default as jason: {}, as others: {}",
            shop.join(", "),
            ask(&url, Some("end-user: jason")),
            ask(&url, Some("end-user: alice"))
        )
    };
    Ok(Scenario {
        problems,
        try_it: format!(
            "ip netns exec {} curl http://{}:9080/",
            productpage.netns, services[1].vip
        ),
        probe: Box::new(probe),
    })
}

/// The guide's traffic-management example, applied unchanged.
const GUIDE_TRAFFIC: &str = include_str!("../../../examples/guide/istio-traffic-management.yaml");
