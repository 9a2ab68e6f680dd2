//! End-to-end scenarios: real processes on loopback, bounded in time and count.
//!
//! This is a `harness = false` test. Run without `CLUSTER_SCENARIO_SERVER` it is the
//! driver: it starts servers (this same binary in server role, see `util/server.rs`, or
//! the `hello` example), acts as their clients, and checks the results and the hygiene
//! of every run: the primary's descriptors after the cluster are those before it, it
//! has no child left (zombie or alive), every worker process is gone, every descriptor
//! a worker received has FD_CLOEXEC. Nothing here forks inside a threaded process: the
//! driver only spawns (fork+exec) and the server role is single-threaded.
//!
//! `cargo test --test scenarios -- NAME…` runs the scenarios whose names contain NAME.

mod util;

#[path = "scenarios/contain.rs"]
mod contain;
#[path = "scenarios/core.rs"]
mod core_modes;
#[path = "scenarios/datagram.rs"]
mod datagram;
#[path = "scenarios/datagram_tamper.rs"]
mod datagram_tamper;
#[path = "scenarios/demo.rs"]
mod demo;
#[path = "scenarios/deploy.rs"]
mod deploy;
#[path = "scenarios/descriptors.rs"]
mod descriptors;
#[path = "scenarios/health.rs"]
mod health;
#[path = "scenarios/hello_deploy.rs"]
mod hello_deploy;
#[path = "scenarios/isolation.rs"]
mod isolation;
#[path = "scenarios/libraries.rs"]
mod libraries;
#[path = "scenarios/limits.rs"]
mod limits;
#[path = "scenarios/pid1.rs"]
mod pid1;
#[path = "scenarios/robust.rs"]
mod robust;
#[path = "scenarios/supervision.rs"]
mod supervision;
#[path = "scenarios/systemd_activate.rs"]
mod systemd_activate;
#[path = "scenarios/trust.rs"]
mod trust;
#[path = "scenarios/upgrade.rs"]
mod upgrade;

use std::time::Instant;

use util::check::Outcome;
use util::proc;

type Scenario = (&'static str, Box<dyn Fn() -> Outcome>);

// ------------------------------------------------------------------ runner

fn main() {
    if std::env::var_os("CLUSTER_SCENARIO_SERVER").is_some() {
        std::process::exit(util::server::main());
    }
    use core_modes::*;
    use demo::*;
    use deploy::*;
    use limits::*;
    use robust::*;
    use supervision::*;
    use trust::*;
    // A scenario body run once per mode, named NAME_round_robin, NAME_shared, …
    let each =
        |name: &'static str, f: fn(&str) -> Outcome, modes: &[&'static str]| -> Vec<Scenario> {
            modes
                .iter()
                .map(|&m| {
                    let full: &'static str =
                        Box::leak(format!("{name}_{}", m.replace('-', "_")).into_boxed_str());
                    (full, Box::new(move || f(m)) as Box<dyn Fn() -> Outcome>)
                })
                .collect()
        };
    let both =
        |name: &'static str, f: fn(&str) -> Outcome| each(name, f, &["round-robin", "shared"]);
    let all = |name: &'static str, f: fn(&str) -> Outcome| {
        each(name, f, &["round-robin", "shared", "reuse-port"])
    };
    let mut scenarios: Vec<Scenario> = Vec::new();
    // The core (reuse-port joins in where it applies).
    scenarios.extend(all("balance", balance));
    scenarios.extend(all("families", families));
    scenarios.extend(all("addr_in_use", addr_in_use));
    scenarios.push(("rr_worker_killed", Box::new(rr_worker_killed)));
    scenarios.extend(both("adopted_fd", adopted_fd));
    // Every mode, one workload.
    scenarios.push(("every_mode", Box::new(every_mode)));
    scenarios.push((
        "reuse_port_crash_keeps_queue",
        Box::new(reuse_port_crash_keeps_queue),
    ));
    scenarios.push((
        "rr_burst_fills_the_channel",
        Box::new(rr_burst_fills_the_channel),
    ));
    scenarios.push((
        "listen_only_refuses_others",
        Box::new(listen_only_refuses_others),
    ));
    // Datagram sockets and exclusive listeners (issue 13).
    scenarios.extend(all("udp_balance", datagram::udp_balance));
    scenarios.extend(all("udp_families", datagram::udp_families));
    scenarios.extend(all("udp_addr_in_use", datagram::udp_addr_in_use));
    scenarios.extend(all("udp_respawn", datagram::udp_respawn));
    scenarios.extend(all(
        "udp_reload_and_upgrade",
        datagram::udp_reload_and_upgrade,
    ));
    scenarios.extend(all(
        "exclusive_beside_shared",
        datagram::exclusive_beside_shared,
    ));
    scenarios.push((
        "listen_only_datagrams",
        Box::new(datagram::listen_only_datagrams),
    ));
    scenarios.push((
        "exclusive_after_privilege_drop",
        Box::new(datagram::exclusive_after_privilege_drop),
    ));
    scenarios.push(("udp_grants_bounded", Box::new(datagram::udp_grants_bounded)));
    // A worker tampering with its datagram socket (issue 19, item 3).
    {
        use datagram_tamper::*;
        let every_mode_ = ["round-robin", "shared", "reuse-port"];
        scenarios.extend(each("udp_tamper_connect", udp_tamper_connect, &every_mode_));
        scenarios.extend(each(
            "udp_tamper_drop_all",
            udp_tamper_drop_all,
            &every_mode_,
        ));
        scenarios.extend(each(
            "udp_tamper_rcvbuf_0",
            udp_tamper_rcvbuf_0,
            &every_mode_,
        ));
        scenarios.extend(each(
            "udp_tamper_nonblock",
            udp_tamper_nonblock,
            &every_mode_,
        ));
        scenarios.extend(each(
            "udp_tamper_shutdown_read",
            udp_tamper_shutdown_read,
            &every_mode_,
        ));
        scenarios.extend(each("udp_tamper_steer", udp_tamper_steer, &["reuse-port"]));
        scenarios.extend(each(
            "udp_untrusted_reload",
            udp_untrusted_reload,
            &every_mode_,
        ));
        scenarios.push((
            "untrusted_unix_datagram_refused",
            Box::new(untrusted_unix_datagram_refused),
        ));
    }
    // Supervision.
    scenarios.extend(all("worker_killed_is_replaced", worker_killed_is_replaced));
    scenarios.push(("crash_loop_backs_off", Box::new(crash_loop_backs_off)));
    scenarios.extend(all(
        "rolling_restart_under_load",
        rolling_restart_under_load,
    ));
    scenarios.extend(all(
        "graceful_shutdown_slow_request",
        graceful_shutdown_slow_request,
    ));
    scenarios.push(("shutdown_deadline_kills", Box::new(shutdown_deadline_kills)));
    scenarios.push(("stop_escalation", Box::new(stop_escalation)));
    scenarios.push(("kill_infinite_loop", Box::new(kill_infinite_loop)));
    scenarios.extend(each(
        "std_listener_tokio",
        libraries::std_listener_tokio,
        &["shared", "reuse-port"],
    ));
    scenarios.push((
        "std_listener_round_robin_refused",
        Box::new(libraries::std_listener_round_robin_refused),
    ));
    scenarios.extend(each(
        "tiny_http_example",
        libraries::tiny_http_example,
        &["shared", "reuse-port"],
    ));
    scenarios.push((
        "tiny_http_round_robin_refused",
        Box::new(libraries::tiny_http_round_robin_refused),
    ));
    scenarios.push((
        "shutdown_survives_group_stop",
        Box::new(shutdown_survives_group_stop),
    ));
    scenarios.push(("primary_killed", Box::new(primary_killed)));
    scenarios.push(("privilege_drop", Box::new(privilege_drop)));
    scenarios.push(("setup_failure_reported", Box::new(setup_failure_reported)));
    scenarios.push(("respawn_never", Box::new(respawn_never)));
    scenarios.push(("worker_settings", Box::new(worker_settings)));
    scenarios.push(("worker_api_and_scaling", Box::new(worker_api_and_scaling)));
    // Faults and bad input.
    for how in [
        "garbage",
        "oversized",
        "unknown",
        "fd",
        "flood",
        "relisten",
        "late_setup",
    ] {
        let name: &'static str = Box::leak(format!("rogue_worker_{how}").into_boxed_str());
        scenarios.push((name, Box::new(move || rogue_worker(how, false))));
    }
    scenarios.push((
        "rogue_worker_fd_contained",
        Box::new(|| rogue_worker("fd", true)),
    ));
    scenarios.extend(both("stopped_worker", stopped_worker));
    scenarios.push(("silent_clients", Box::new(silent_clients)));
    scenarios.push((
        "busy_worker_connection_moves",
        Box::new(busy_worker_connection_moves),
    ));
    scenarios.extend(all("client_leaves_early", client_leaves_early));
    scenarios.push((
        "reaped_pid_not_signalled",
        Box::new(reaped_pid_not_signalled),
    ));
    scenarios.push(("fork_failure", Box::new(fork_failure)));
    scenarios.push(("primary_out_of_fds", Box::new(primary_out_of_fds)));
    scenarios.push(("worker_out_of_fds", Box::new(worker_out_of_fds)));
    scenarios.push(("worker_ctrunc", Box::new(worker_ctrunc)));
    scenarios.extend(all("many_workers", many_workers));
    scenarios.push(("hello_bad_input", Box::new(hello_bad_input)));
    // Privilege separation: what the primary refuses a worker, what it never follows.
    scenarios.push((
        "untrusted_listen_requests",
        Box::new(untrusted_listen_requests),
    ));
    scenarios.push(("user_needs_allowlist", Box::new(user_needs_allowlist)));
    scenarios.extend(all("socket_file_not_followed", socket_file_not_followed));
    scenarios.push((
        "reuse_port_foreign_group",
        Box::new(reuse_port_foreign_group),
    ));
    scenarios.push((
        "stale_probe_full_backlog",
        Box::new(stale_probe_full_backlog),
    ));
    scenarios.extend(all("unused_handle_released", unused_handle_released));
    scenarios.push(("unread_listen_replies", Box::new(unread_listen_replies)));
    // Limits a worker cannot push the primary past.
    for contained in [false, true] {
        let tail = if contained { "_contained" } else { "" };
        for how in ["online", "newconn", "handoff"] {
            let name: &'static str =
                Box::leak(format!("rogue_lingering_socket_{how}{tail}").into_boxed_str());
            scenarios.push((
                name,
                Box::new(move || rogue_lingering_socket(how, contained)),
            ));
        }
    }
    // Issue 19, items 1 and 2: as the kernel is, and as on one without SO_PASSRIGHTS.
    for contained in [false, true] {
        let tail = if contained { "_contained" } else { "" };
        for how in ["online", "handoff"] {
            let name: &'static str =
                Box::leak(format!("rogue_five_descriptors_{how}{tail}").into_boxed_str());
            scenarios.push((
                name,
                Box::new(move || descriptors::rogue_five_descriptors(how, contained)),
            ));
        }
        if contained {
            // Sent behind a record that ends the primary's reading: the five are still
            // queued in the primary's end of the channel when it closes it.
            scenarios.push((
                "rogue_five_descriptors_queued_contained",
                Box::new(|| descriptors::rogue_five_descriptors("queued", true)),
            ));
        }
        if !contained {
            scenarios.push((
                "pending_unix_connection_with_descriptor",
                Box::new(descriptors::pending_unix_connection_with_descriptor),
            ));
        }
        let name: &'static str = Box::leak(format!("rogue_fuse_file{tail}").into_boxed_str());
        scenarios.push((
            name,
            Box::new(move || descriptors::rogue_fuse_file(contained)),
        ));
    }
    scenarios.extend(each(
        "listen_budget",
        listen_budget,
        &["round-robin", "reuse-port"],
    ));
    scenarios.push(("inbox_bounded", Box::new(inbox_bounded)));
    scenarios.extend(both("worker_bind_at_fd_limit", worker_bind_at_fd_limit));
    scenarios.extend(each(
        "nonblocking_listener",
        nonblocking_listener,
        &["shared", "reuse-port"],
    ));
    scenarios.push(("duration_max", Box::new(duration_max)));
    scenarios.push(("listen_reply_deadline", Box::new(listen_reply_deadline)));
    scenarios.extend(both("adopted_abstract_unix", adopted_abstract_unix));
    scenarios.push(("worker_cap", Box::new(worker_cap)));
    // Deployment: a service manager's signals.
    for mode in ["round-robin", "shared", "reuse-port"] {
        for (sig, whom) in [("TERM", "all"), ("INT", "all"), ("TERM", "primary")] {
            let name: &'static str = Box::leak(
                format!(
                    "signal_{}_{whom}_{}",
                    sig.to_lowercase(),
                    mode.replace('-', "_")
                )
                .into_boxed_str(),
            );
            scenarios.push((
                name,
                Box::new(move || signalled_with_requests_in_flight(mode, sig, whom)),
            ));
        }
    }
    for mode in ["round-robin", "shared", "reuse-port"] {
        for (sig, whom) in [("TERM", "primary"), ("TERM", "all"), ("INT", "all")] {
            let name: &'static str = Box::leak(
                format!(
                    "hello_graceful_stop_{}_{whom}_{}",
                    sig.to_lowercase(),
                    mode.replace('-', "_")
                )
                .into_boxed_str(),
            );
            scenarios.push((
                name,
                Box::new(move || hello_deploy::hello_graceful_stop(mode, sig, whom)),
            ));
        }
    }
    scenarios.extend(all(
        "hello_keepalive_reloads",
        hello_deploy::hello_keepalive_reloads,
    ));
    scenarios.extend(all("hello_pool_grows", hello_deploy::hello_pool_grows));
    scenarios.extend(all(
        "hello_busy_keepalive_does_not_hold_accept",
        hello_deploy::hello_busy_keepalive_does_not_hold_accept,
    ));
    scenarios.push((
        "hello_stop_not_held_by_trickle",
        Box::new(hello_deploy::hello_stop_not_held_by_trickle),
    ));
    scenarios.push((
        "hello_stop_told_twice",
        Box::new(hello_deploy::hello_stop_told_twice),
    ));
    for mode in ["round-robin", "shared", "reuse-port"] {
        for close in [false, true] {
            let name: &'static str = Box::leak(
                format!(
                    "upgrade_under_load_{}_{}",
                    mode.replace('-', "_"),
                    if close { "close" } else { "keepalive" }
                )
                .into_boxed_str(),
            );
            scenarios.push((
                name,
                Box::new(move || upgrade::upgrade_under_load(mode, close)),
            ));
        }
    }
    scenarios.push(("upgrade_refused", Box::new(upgrade::upgrade_refused)));
    scenarios.push(("upgrade_notify", Box::new(upgrade::upgrade_notify)));
    scenarios.push((
        "upgrade_stopped_during_trial",
        Box::new(upgrade::upgrade_stopped_during_trial),
    ));
    // What an upgrade believes (issue 19, items 5, 6 and 11).
    scenarios.push((
        "upgrade_record_stray",
        Box::new(upgrade::upgrade_record_stray),
    ));
    scenarios.push((
        "upgrade_trial_stray",
        Box::new(upgrade::upgrade_trial_stray),
    ));
    scenarios.push((
        "upgrade_program_writable",
        Box::new(upgrade::upgrade_program_writable),
    ));
    scenarios.push((
        "upgrade_many_unix_listeners",
        Box::new(upgrade::upgrade_many_unix_listeners),
    ));
    scenarios.push(("service_manager_notify", Box::new(service_manager_notify)));
    scenarios.push(("watchdog_floor", Box::new(watchdog_floor)));
    scenarios.push(("socket_activation", Box::new(socket_activation)));
    scenarios.push((
        "systemd_socket_activate",
        Box::new(systemd_activate::systemd_socket_activate),
    ));
    scenarios.push(("pid1_reaps_orphans", Box::new(pid1::pid1_reaps_orphans)));
    // Worker health: hung workers, heartbeats, recycling by count and by memory.
    {
        use health::*;
        scenarios.extend(all("hung_worker_replaced", hung_worker_replaced));
        scenarios.push((
            "group_stop_is_not_a_hang",
            Box::new(group_stop_is_not_a_hang),
        ));
        scenarios.push((
            "heartbeat_replaces_hung_application",
            Box::new(heartbeat_replaces_hung_application),
        ));
        scenarios.extend(all(
            "recycle_by_count_under_load",
            recycle_by_count_under_load,
        ));
        scenarios.extend(all("recycle_keeps_n_serving", recycle_keeps_n_serving));
        scenarios.push(("recycle_by_memory", Box::new(recycle_by_memory)));
        scenarios.push((
            "timeout_spares_full_inbox",
            Box::new(timeout_spares_full_inbox),
        ));
        scenarios.push(("hello_health_flags", Box::new(hello_health_flags)));
    }
    // The examples.
    scenarios.extend(all("hello_contract", hello_contract));
    scenarios.push(("hello_families", Box::new(hello_families)));
    scenarios.push(("hello_slow_clients", Box::new(hello_slow_clients)));
    scenarios.push(("hello_errors", Box::new(hello_errors)));
    scenarios.push(("hello_supervision", Box::new(hello_supervision)));
    scenarios.push(("messages_example", Box::new(messages_example)));
    // What a worker starts with, and the primary's state left alone in it.
    {
        use isolation::*;
        scenarios.push(("iso_inherit_nothing", Box::new(iso_inherit_nothing)));
        scenarios.push(("iso_no_controlling_tty", Box::new(iso_no_controlling_tty)));
        scenarios.push(("iso_keep_fd", Box::new(iso_keep_fd)));
        scenarios.push((
            "iso_capabilities_dropped",
            Box::new(iso_capabilities_dropped),
        ));
        scenarios.push((
            "iso_adopted_rr_survives_respawn",
            Box::new(iso_adopted_rr_survives_respawn),
        ));
    }
    // What one worker can do to the others (issue 19, items 4, 9, 10).
    scenarios.push((
        "log_injection_escaped",
        Box::new(contain::log_injection_escaped),
    ));
    scenarios.push((
        "sibling_signals_refused",
        Box::new(contain::sibling_signals_refused),
    ));
    scenarios.push((
        "sibling_signals_shared_uid",
        Box::new(contain::sibling_signals_shared_uid),
    ));
    scenarios.push((
        "max_rss_counts_held_memory",
        Box::new(contain::max_rss_counts_held_memory),
    ));
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let mut failed = Vec::new();
    let mut ran = 0;
    let fds_before = proc::open_fds();
    for (name, f) in &scenarios {
        if !filters.is_empty() && !filters.iter().any(|x| name.contains(x.as_str())) {
            continue;
        }
        ran += 1;
        let started = Instant::now();
        println!("scenario {name} ...");
        match f() {
            Ok(()) => println!(
                "scenario {name} ok ({:.1}s)",
                started.elapsed().as_secs_f64()
            ),
            Err(e) => {
                println!(
                    "scenario {name} FAILED ({:.1}s): {e}",
                    started.elapsed().as_secs_f64()
                );
                failed.push(*name);
            }
        }
    }
    let fds_after = proc::open_fds();
    let children = proc::children_of(std::process::id());
    if fds_after != fds_before {
        println!("driver leaked descriptors: {fds_before:?} -> {fds_after:?}");
        failed.push("driver hygiene");
    }
    if !children.is_empty() {
        println!("driver left children: {children:?}");
        failed.push("driver hygiene");
    }
    println!("\n{ran} scenarios, {} failed {failed:?}", failed.len());
    std::process::exit(i32::from(!failed.is_empty()));
}
