//! `shoal`: the command line and server that wire the Shoal crates together.

mod audience_commands;
mod bench;
mod bench_audience;
mod bench_funnel;
mod bench_load;
mod bench_query;
mod build_commands;
mod catalog_commands;
mod cli;
mod console;
mod demo;
mod error;
mod extract;
mod ingest_commands;
mod metrics;
mod openapi;
mod postgres;
mod progress;
mod query_commands;
mod rate_limit;
mod report_commands;
mod serve;
mod tokens;
mod tracking;
mod uploads;
mod write_keys;

use clap::Parser;
use shoal_catalog::{Catalog, Warehouse};

use cli::{Cli, Command};
use error::AppResult;

/// Our warnings; the storage libraries' own chatter (expected misses while probing for tables,
/// merge metrics) only when asked for with `SHOAL_LOG`.
const DEFAULT_LOG: &str = "warn,buoyant_kernel=off,deltalake_core=error";

/// Set algebra and query operators allocate and free many page-sized blocks; the system
/// allocator hands freed pages back and faults them in again on the next operation.
/// mimalloc keeps them for a while: see [`PURGE_DELAY_MS`] and [`BUILD_PURGE_DELAY_MS`].
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How long a build keeps freed pages before handing them back to the system, in
/// milliseconds (mimalloc 2's default is 10). A build reads, sorts and writes every day of
/// `events` in buffers of tens of megabytes, freed and allocated again all the time; after
/// 10 ms their pages went back and were faulted in and zeroed again for the next day, a
/// quarter of a full build's CPU time. Ten seconds keep them from one step to the next (the
/// identity maps of one are the sort buffers of the next); memory still goes back once the
/// build is over. `MIMALLOC_PURGE_DELAY` overrides it.
const BUILD_PURGE_DELAY_MS: std::ffi::c_long = 10_000;

/// The address space a build reserves for its allocations at a time, in KiB (mimalloc 2
/// reserves 1 GiB arenas). A first build's large buffers (maps of millions of identities,
/// a day of sorted events) did not fit the free runs of 1 GiB arenas, so each was taken fresh
/// from the system and its pages faulted in and zeroed again: a first build of the 50M-event
/// world faulted in 15 GB for a peak of 6.2 GB and spent 37–42 s in the kernel. In one arena of
/// 16 GiB, freed buffers are reused: it faults in its peak once (8.3 GB, the memory it keeps),
/// spends 29–31 s in the kernel, and took 95–102 s against 102–111 s. Only address space is
/// reserved: pages are taken as they are touched. At most three quarters of the machine's
/// memory; `MIMALLOC_ARENA_RESERVE` overrides it.
const BUILD_ARENA_KIB: u64 = 16 << 20;

/// `mi_option_arena_reserve` in mimalloc 2's `mi_option_e` (KiB).
const MI_OPTION_ARENA_RESERVE: libmimalloc_sys::mi_option_t = 23;

/// The machine's memory in KiB, from `/proc/meminfo`.
fn memory_kib() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The arena a build reserves at a time, in KiB: [`BUILD_ARENA_KIB`], or three quarters of
/// `memory` KiB when that is less (none when the memory is not known).
fn build_arena_kib(memory: Option<u64>) -> Option<u64> {
    memory.map(|m| BUILD_ARENA_KIB.min(m / 4 * 3))
}

/// The same for every other command. An ingest works in buffers of megabytes (a block of
/// lines, a part's columns, a Parquet page and its compressed copy): with the 10 ms default,
/// an ingest of 4 GB of messages took 400,000 page faults and twice the system time. A tenth
/// of a second keeps the pages from one buffer to the next; a second would also hold the
/// chunks already written (a tenth more at the peak of a streamed ingest of large messages).
const PURGE_DELAY_MS: std::ffi::c_long = 100;

/// `mi_option_purge_delay` in mimalloc 2's `mi_option_e`.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Whether `command` runs a build (or times one).
fn builds(command: &Command) -> bool {
    matches!(
        command,
        Command::Build(_)
            | Command::Bench(cli::BenchCommand::Build { .. } | cli::BenchCommand::Identity { .. })
    )
}

/// The allocator's purge delay for `command`.
fn purge_delay(command: &Command) -> std::ffi::c_long {
    if builds(command) {
        BUILD_PURGE_DELAY_MS
    } else {
        PURGE_DELAY_MS
    }
}

/// Sets the allocator's purge delay for `command` unless the environment already chose one,
/// and turns transparent huge pages off for a build unless `MIMALLOC_ALLOW_THP` chose.
///
/// mimalloc asks for huge pages for its arenas. A build's buffers come and go by the
/// hundred megabytes, and each 2 MiB page is zeroed whole at its first touch however little
/// of it is used: in an incremental build of the 50M-event world, zeroing pages took a third
/// of the samples with huge pages and a seventh without, and the build took 7.7–9.2 s
/// (3.3–5.4 s of it in the kernel) against 6.7–7.2 s (1.8–2.0 s). An ingest keeps its
/// buffers and gains from the fewer TLB misses, so it keeps huge pages; so does a build that
/// rewrites everything ([`huge_pages_for_build`]).
#[allow(unsafe_code)]
fn tune_allocator(command: &Command) {
    #[cfg(target_os = "linux")]
    if builds(command) && std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        // SAFETY: `PR_SET_THP_DISABLE` takes no pointer; it only marks this process's memory
        // so that pages faulted in from now on are base pages. A failure leaves them as they
        // were, which is only slower.
        unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    }
    if builds(command)
        && std::env::var_os("MIMALLOC_ARENA_RESERVE").is_none()
        && let Some(kib) = build_arena_kib(memory_kib())
        && let Ok(kib) = std::ffi::c_long::try_from(kib)
    {
        // SAFETY: as for the purge delay below: this runs first in `main`, before any thread
        // is started, and the option only sizes the address space reserved at a time.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_RESERVE, kib) }
    }
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    let delay = purge_delay(command);
    // SAFETY: `mi_option_set` is not thread safe, and this runs first in `main`, before any
    // thread is started. The option only changes when freed pages go back to the system.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, delay) }
}

/// Huge pages for a build that rewrites everything, base pages for any other, unless
/// `MIMALLOC_ALLOW_THP` chose. A first build of the 50M-event world fills maps of millions of
/// identities and sorts whole days: with base pages it spent 31–41 s of 124 in the kernel,
/// with huge pages it took 111 s. An incremental build is faster without (see
/// [`tune_allocator`]).
#[allow(unsafe_code)]
pub(crate) fn huge_pages_for_build(everything: bool) {
    #[cfg(target_os = "linux")]
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        // SAFETY: as in `tune_allocator`: no pointer is passed, and only pages faulted in
        // from now on are affected.
        unsafe {
            libc::prctl(
                libc::PR_SET_THP_DISABLE,
                libc::c_ulong::from(!everything),
                0,
                0,
                0,
            )
        };
    }
    #[cfg(not(target_os = "linux"))]
    let _ = everything;
}

fn main() {
    let cli = Cli::parse();
    tune_allocator(&cli.command);
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SHOAL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG)),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            std::process::exit(2);
        }
    };
    let code = match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            2
        }
    };
    std::process::exit(code);
}

async fn run(cli: Cli) -> AppResult<i32> {
    let quiet = cli.quiet || !std::io::IsTerminal::is_terminal(&std::io::stderr());
    match &cli.command {
        Command::DemoData(args) => {
            demo::demo_data(args, quiet)?;
            Ok(0)
        }
        Command::Demo(args) => {
            demo::demo(args, &cli.warehouse, quiet).await?;
            Ok(0)
        }
        Command::Ingest(args) => {
            let catalog = open_catalog(&cli.warehouse).await?;
            let report = ingest_commands::ingest(&catalog, args, quiet).await?;
            Ok(if report.counts.balances() { 0 } else { 1 })
        }
        Command::Build(args) => {
            let catalog = open_catalog(&cli.warehouse).await?;
            build_commands::build_command(&catalog, args, quiet).await?;
            Ok(0)
        }
        Command::Identity(command) => {
            let catalog = open_catalog(&cli.warehouse).await?;
            build_commands::identity_command(&catalog, command).await?;
            Ok(0)
        }
        Command::Quarantine(command) => {
            let catalog = open_catalog(&cli.warehouse).await?;
            ingest_commands::quarantine(&catalog, command).await?;
            Ok(0)
        }
        Command::Sql(args) => {
            let catalog = open_catalog(&cli.warehouse).await?;
            query_commands::sql_command(&catalog, args).await?;
            Ok(0)
        }
        Command::Count(args) => {
            let catalog = open_catalog(&cli.warehouse).await?;
            query_commands::count_command(&catalog, args).await?;
            Ok(0)
        }
        Command::Audience(command) => {
            let catalog = open_catalog(&cli.warehouse).await?;
            audience_commands::command(&catalog, command).await?;
            Ok(0)
        }
        Command::Report(command) => {
            let catalog = open_catalog(&cli.warehouse).await?;
            report_commands::command(&catalog, command).await?;
            Ok(0)
        }
        Command::Token(command) => {
            let catalog = open_catalog(&cli.warehouse).await?;
            tokens::command(&catalog, command).await?;
            Ok(0)
        }
        Command::WriteKey(command) => {
            let catalog = open_catalog(&cli.warehouse).await?;
            match command {
                cli::WriteKeyCommand::Create { name, json } => {
                    let key = write_keys::create(&catalog, name).await?;
                    if *json {
                        println!("{}", serde_json::json!({"write_key": key, "name": name}));
                    } else {
                        println!("{key}");
                        eprintln!("write key '{name}' created; it is shown only now");
                    }
                }
            }
            Ok(0)
        }
        Command::Catalog(command) => {
            let mut catalog = open_catalog(&cli.warehouse).await?;
            catalog_commands::run(&mut catalog, command).await
        }
        Command::Bench(cli::BenchCommand::Ingest { events, data, json }) => {
            bench::ingest(*events, data.clone(), *json).await?;
            Ok(0)
        }
        Command::Bench(cli::BenchCommand::Build {
            users,
            data,
            keep_warehouse,
            keep_ingested,
            json,
        }) => {
            let keep = bench::Keep {
                warehouse: keep_warehouse.as_deref(),
                ingested: keep_ingested.as_deref(),
            };
            bench::build(*users, data.clone(), keep, *json).await?;
            Ok(0)
        }
        Command::Bench(cli::BenchCommand::Query {
            users,
            data,
            runs,
            json,
        }) => {
            bench_query::query(*users, data.clone(), *runs, *json).await?;
            Ok(0)
        }
        Command::Bench(cli::BenchCommand::Load {
            users,
            seconds,
            writers,
            readers,
            data,
            json,
        }) => {
            bench_load::load(*users, *seconds, *writers, *readers, data.clone(), *json).await?;
            Ok(0)
        }
        Command::Bench(cli::BenchCommand::Audience {
            universe,
            runs,
            data,
            json,
        }) => {
            bench_audience::audience(*universe, *runs, data.clone(), *json).await?;
            Ok(0)
        }
        Command::Bench(cli::BenchCommand::Funnel {
            events,
            users,
            runs,
            data,
            json,
        }) => {
            let users = users.unwrap_or((*events / 20).clamp(1, u64::from(u32::MAX)) as u32);
            bench_funnel::funnel(*events, users, *runs, data.clone(), *json).await?;
            Ok(0)
        }
        Command::Bench(cli::BenchCommand::Identity { links, json }) => {
            bench::identity(*links, *json)?;
            Ok(0)
        }
        Command::Serve(args) => {
            let catalog = open_catalog(&cli.warehouse).await?;
            serve::serve(catalog, args).await?;
            Ok(0)
        }
    }
}

async fn open_catalog(location: &str) -> AppResult<Catalog> {
    let warehouse = Warehouse::open(location)?;
    Ok(Catalog::open(warehouse).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The option number is mimalloc's purge delay: its default of 10 ms is read there, and
    /// the settings are read back after.
    #[test]
    #[allow(unsafe_code)]
    fn freed_pages_are_kept_longer_by_a_build_without_huge_pages() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some()
            || std::env::var_os("MIMALLOC_ALLOW_THP").is_some()
            || std::env::var_os("MIMALLOC_ARENA_RESERVE").is_some()
        {
            return;
        }
        // SAFETY: reading an option is a plain load; no other test touches the allocator's
        // options. Reading the huge-page flag takes no pointer.
        let delay = || unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        let arena = || unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_ARENA_RESERVE) };
        // mimalloc 2's 1 GiB, in KiB.
        assert_eq!(arena(), 1 << 20);
        let huge_pages_off = || unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) };
        assert_eq!(delay(), 10);
        tune_allocator(
            &Cli::parse_from(["shoal", "ingest", "--source", "segment", "x.jsonl"]).command,
        );
        assert_eq!(delay(), 100);
        assert_eq!(arena(), 1 << 20);
        assert_eq!(huge_pages_off(), 0);
        tune_allocator(&Cli::parse_from(["shoal", "build"]).command);
        assert_eq!(delay(), 10_000);
        let kib = build_arena_kib(memory_kib()).expect("the machine's memory");
        assert_eq!(arena() as u64, kib);
        assert_eq!(huge_pages_off(), 1);
        huge_pages_for_build(true);
        assert_eq!(huge_pages_off(), 0);
        huge_pages_for_build(false);
        assert_eq!(huge_pages_off(), 1);
    }

    #[test]
    fn a_build_reserves_16_gib_at_a_time_or_three_quarters_of_a_smaller_machine() {
        assert_eq!(build_arena_kib(Some(64 << 20)), Some(16 << 20));
        assert_eq!(build_arena_kib(Some(24 << 20)), Some(16 << 20));
        assert_eq!(build_arena_kib(Some(8 << 20)), Some(6 << 20));
        assert_eq!(build_arena_kib(None), None);
    }
}
