//! The command line: `shoal [--warehouse URL] <command>`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Shoal: ingest behaviour events and orders, merge identities, pick audiences, measure campaigns.
#[derive(Debug, Parser)]
#[command(name = "shoal", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Warehouse location: file://PATH (default ./data/warehouse) or s3://BUCKET/PREFIX.
    #[arg(long, global = true, env = "SHOAL_WAREHOUSE", default_value = shoal_catalog::DEFAULT_WAREHOUSE)]
    pub warehouse: String,

    /// Hide progress bars (they are drawn on stderr only when it is a terminal).
    #[arg(long, global = true)]
    pub quiet: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the whole main job on the embedded default: sample data → warehouse → serve.
    Demo(DemoArgs),
    /// Write the deterministic sample world (Segment JSON lines, Youzan and Tmall exports).
    DemoData(DemoDataArgs),
    /// Import files: clean, dedup and land them; quarantine what cannot be cleaned.
    Ingest(IngestArgs),
    /// Identity merge, then the wide tables (users, orders_wide) and tag bitmaps; incremental.
    Build(BuildArgs),
    /// Look into identity merge (why identities are one person) and undo a wrong link.
    #[command(subcommand)]
    Identity(IdentityCommand),
    /// Inspect quarantined rows.
    #[command(subcommand)]
    Quarantine(QuarantineCommand),
    /// Read-only SQL over the warehouse (SELECT, WITH, EXPLAIN).
    Sql(SqlArgs),
    /// Audience size of a condition tree.
    Count(CountArgs),
    /// Audience packs: create (from conditions, SQL, a set expression, an uploaded list or a
    /// lookalike of another pack),
    /// list, show, versions, diff, refresh, export, delete, restore.
    #[command(subcommand)]
    Audience(AudienceCommand),
    /// Reports over the events: funnels.
    #[command(subcommand)]
    Report(ReportCommand),
    /// Manage API tokens (Bearer tokens of /api/* and passwords of the Postgres endpoint).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Manage write keys of the tracking API (/v1/*).
    #[command(subcommand, name = "writekey")]
    WriteKey(WriteKeyCommand),
    /// Show or check the catalog: tables, field standards, roles, quality monitors.
    #[command(subcommand)]
    Catalog(CatalogCommand),
    /// Benchmarks that print their figures (build with --release).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Serve the HTTP API.
    Serve(ServeArgs),
}

#[derive(Debug, Args)]
pub struct SqlArgs {
    /// The query: one SELECT, WITH or EXPLAIN statement.
    pub query: String,
    /// Output: a table for people, CSV, JSON (one object with columns and rows), or an
    /// Arrow IPC stream.
    #[arg(long, value_enum, default_value = "table")]
    pub format: SqlFormat,
}

/// How `shoal sql` prints results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SqlFormat {
    Table,
    Csv,
    Json,
    /// One JSON object per row, per line.
    Jsonl,
    Arrow,
}

#[derive(Debug, Args)]
pub struct CountArgs {
    /// Condition tree (JSON): a file, or - for stdin.
    #[arg(long)]
    pub conditions: String,
    /// Evaluation date T for relative dates (default: today in the catalog's zone).
    #[arg(long)]
    pub evaluated_at: Option<chrono::NaiveDate>,
    /// auto: tag bitmaps where they cover the tree; scan: always scan the wide tables.
    #[arg(long, value_enum, default_value = "auto")]
    pub path: CountPath,
    /// Also print the SQL the tree compiles to and its plan.
    #[arg(long)]
    pub explain: bool,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Which path `shoal count` takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CountPath {
    Auto,
    Scan,
}

#[derive(Debug, Args)]
pub struct DemoDataArgs {
    /// Folder to write into (created if missing).
    #[arg(long)]
    pub out: PathBuf,
    /// Number of people.
    #[arg(long, default_value_t = 10_000)]
    pub users: u32,
    /// Seed of every random draw: the same seed writes the same bytes.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Last day of the window (YYYY-MM-DD, Beijing time).
    #[arg(long, default_value = "2026-11-20")]
    pub end: chrono::NaiveDate,
    /// Length of the window in days.
    #[arg(long, default_value_t = 90)]
    pub days: u32,
    /// Index of the first person. To write a world too large for the disk in parts, give
    /// each part its own range of people (and its own seed): logins, buyer ids and order ids
    /// then never collide across parts.
    #[arg(long, default_value_t = 0)]
    pub first: u32,
    /// Print the manifest as one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct IngestArgs {
    /// Source kind: segment (JSON lines), youzan (API JSON lines or console CSV), tmall (CSV).
    #[arg(long)]
    pub source: shoal_ingest::SourceKind,
    /// Files to import as one batch.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Print the batch report as one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Rewrite every day of events, not only the days with new or moved rows.
    #[arg(long)]
    pub full: bool,
    /// Day that windowed counts and RFM recency count back from (default: today in the
    /// catalog's zone).
    #[arg(long)]
    pub as_of: Option<chrono::NaiveDate>,
    /// Print the build report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum IdentityCommand {
    /// Show a person's identities, the path of links joining each, and refused links.
    Explain {
        /// The user id (a merged-away id is followed to its survivor).
        user_id: u32,
        #[arg(long)]
        json: bool,
    },
    /// Remove a wrong link (TYPE:VALUE TYPE:VALUE); the person splits when nothing else
    /// joins the two sides. `shoal build` then moves their events and orders.
    Unlink {
        /// One end, e.g. anonymous_id:anon-shop-tablet-1a2b3c4d.
        a: String,
        /// The other end, e.g. login_id:u1000007.
        b: String,
        /// Why the link is wrong (kept in the log).
        #[arg(long)]
        reason: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum QuarantineCommand {
    /// List quarantined rows, newest batch first.
    List {
        /// Only this batch.
        #[arg(long)]
        batch: Option<String>,
        /// Only this reason code.
        #[arg(long)]
        reason: Option<String>,
        /// At most this many rows.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Show every quarantined row at a location (all batches), raw text in full.
    Show {
        /// Location as `list` prints it (e.g. events.jsonl:42, "POST /v1/batch#3").
        location: String,
        /// Print as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Re-submit quarantined rows (not yet replayed) as a new batch, as stored or corrected.
    Replay {
        /// Only rows of this batch.
        #[arg(long)]
        batch: Option<String>,
        /// Only the row at this location (e.g. events.jsonl:42).
        #[arg(long)]
        location: Option<String>,
        /// Only rows with this reason code.
        #[arg(long)]
        reason: Option<String>,
        /// A file holding the corrected raw text; needs exactly one selected row.
        #[arg(long)]
        fix: Option<PathBuf>,
        /// Print the batch report as one JSON object.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// A 4-step, 7-day funnel over synthetic events (all people and a 10% pack) next to
    /// chDB's windowFunnel on the same Parquet files; per-step counts must match.
    Funnel {
        /// Events (over 90 days).
        #[arg(long, default_value_t = 200_000_000)]
        events: u64,
        /// People (default: events / 20).
        #[arg(long)]
        users: Option<u32>,
        /// Timed runs per engine and case (after one warm-up).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Where to keep the generated warehouse (reused when it matches).
        #[arg(long)]
        data: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// JSON lines → clean → dedup → Delta commit, next to DuckDB on the same file.
    Ingest {
        /// About this many events (a sample world is written unless --data has events.jsonl).
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
        /// Folder holding events.jsonl to reuse.
        #[arg(long)]
        data: Option<PathBuf>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// A full build of the sample world, then an incremental build after a 1% delta.
    Build {
        /// People in the sample world (about 19 events each).
        #[arg(long, default_value_t = 100_000)]
        users: u32,
        /// Where to keep the generated worlds (reused when they match).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Also keep the warehouse as it stands before the incremental build here (hard
        /// links), so that build can be run again: `shoal --warehouse file://DIR build
        /// --as-of 2026-11-20` on a hard-linked copy of DIR.
        #[arg(long)]
        keep_warehouse: Option<PathBuf>,
        /// Also keep the warehouse as it stands before the full build (ingested, never
        /// built) here, as hard links, so the first build can be run again the same way.
        #[arg(long)]
        keep_ingested: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Audience counts through the HTTP API (bitmap and scan paths) next to DuckDB running
    /// the equivalent SQL over the same Parquet files.
    Query {
        /// People in the sample world (about 19 events each).
        #[arg(long, default_value_t = 100_000)]
        users: u32,
        /// Where to keep the generated world and its warehouse (reused when they match).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Timed runs per query (after one warm-up).
        #[arg(long, default_value_t = 30)]
        runs: usize,
        #[arg(long)]
        json: bool,
    },
    /// A bounded load test on loopback: tracking-API batches and audience counts at once for
    /// a fixed time; requests/s, p50/p99, errors, and a check that every acknowledged event is
    /// in the warehouse exactly once.
    Load {
        /// People in the sample world the counts run on.
        #[arg(long, default_value_t = 20_000)]
        users: u32,
        /// How long to load the server.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Concurrent tracking clients (each sends 20-event batches back to back).
        #[arg(long, default_value_t = 4)]
        writers: usize,
        /// Concurrent count clients.
        #[arg(long, default_value_t = 4)]
        readers: usize,
        /// Where to keep the generated world (reused when it matches).
        #[arg(long)]
        data: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Audience packs: set algebra next to pyroaring, materialising a pack from a tree and
    /// matching an uploaded list of phones, over a synthetic universe.
    Audience {
        /// People in the universe.
        #[arg(long, default_value_t = 10_000_000)]
        universe: u32,
        /// Timed runs per operation.
        #[arg(long, default_value_t = 20)]
        runs: usize,
        /// Where to keep the synthetic warehouse (reused).
        #[arg(long)]
        data: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Identity merge core: hash, sort and union-find with caps over a synthetic graph.
    Identity {
        /// Links to merge (four per person).
        #[arg(long, default_value_t = 20_000_000)]
        links: u64,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct AudienceCreateArgs {
    /// Pack name: letters, digits and _, starting with a letter.
    pub name: String,
    /// A condition tree (JSON file, or - for stdin).
    #[arg(long, group = "source")]
    pub conditions: Option<String>,
    /// Read-only SQL whose first column is user ids.
    #[arg(long, group = "source")]
    pub sql: Option<String>,
    /// A set expression over other packs: '(a | b) & c - d'.
    #[arg(long, group = "source")]
    pub expr: Option<String>,
    /// A list of user ids, phones, hashed phones or login ids (CSV or one per line; - for stdin).
    #[arg(long, group = "source")]
    pub upload: Option<String>,
    /// Expand this seed pack: the people outside it most like its members.
    #[arg(long, group = "source")]
    pub lookalike: Option<String>,
    /// Lookalike: how many people to add.
    #[arg(long, requires = "lookalike", conflicts_with = "percent")]
    pub size: Option<u64>,
    /// Lookalike: add this percentage of the people outside the seed.
    #[arg(long, requires = "lookalike")]
    pub percent: Option<f64>,
    /// Lookalike: logistic (regression, seed against the rest) or cosine (to the seed's centroid).
    #[arg(long, value_enum, requires = "lookalike")]
    pub method: Option<LookalikeMethod>,
    /// Lookalike: fields of users to compare on (default: public numeric, bool, enum, time).
    #[arg(long, value_delimiter = ',', requires = "lookalike")]
    pub features: Vec<String>,
    /// What the uploaded list holds: auto, user_id, phone, phone_sha256 or an identity type.
    #[arg(long, default_value = "auto")]
    pub id_type: String,
    /// What the pack is for.
    #[arg(long)]
    pub description: Option<String>,
    /// Refresh on this cron schedule (five fields, e.g. "0 3 * * *"); the pack is dynamic.
    #[arg(long)]
    pub dynamic: Option<String>,
    /// Time zone of the schedule (default UTC), e.g. Asia/Shanghai.
    #[arg(long)]
    pub zone: Option<String>,
    /// Evaluation date T of a once pack (default today).
    #[arg(long)]
    pub evaluated_at: Option<chrono::NaiveDate>,
    /// Print `{"audience", "version"}`.
    #[arg(long)]
    pub json: bool,
}

/// How a lookalike scores people.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LookalikeMethod {
    Logistic,
    Cosine,
}

#[derive(Debug, Subcommand)]
pub enum AudienceCommand {
    /// Make a pack and compute its first version.
    Create(AudienceCreateArgs),
    /// Every pack with its size, mode, last run and status.
    List {
        /// Include deleted packs.
        #[arg(long)]
        deleted: bool,
        #[arg(long)]
        json: bool,
    },
    /// One pack: definition, versions, runs, next refresh (JSON).
    Show { name: String },
    /// A pack's versions with sizes, added and removed (JSON).
    Versions { name: String },
    /// Compare two versions; --list entered|left prints who.
    Diff {
        name: String,
        #[arg(long)]
        from: u64,
        #[arg(long)]
        to: u64,
        /// List the user ids that entered or left.
        #[arg(long)]
        list: Option<String>,
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// Compute a new version now.
    Refresh { name: String },
    /// Members with chosen columns of users, masked or hashed by role; CSV or JSON lines.
    #[command(disable_version_flag = true)]
    Export {
        name: String,
        /// Version (default: the newest).
        #[arg(long = "version", id = "pack_version")]
        version: Option<u64>,
        /// Columns of users, comma-separated (e.g. phone,member_level,last_order_at).
        #[arg(long)]
        columns: Option<String>,
        /// csv or jsonl.
        #[arg(long, default_value = "csv")]
        format: String,
        /// Write to this file instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Soft-delete a pack (restore undoes it).
    Delete { name: String },
    /// Undo a delete.
    Restore { name: String },
    /// An uploaded pack's rows that found nobody (CSV: line, value, reason).
    #[command(disable_version_flag = true)]
    Unmatched {
        name: String,
        /// Version (default: the newest).
        #[arg(long = "version", id = "pack_version")]
        version: Option<u64>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ReportCommand {
    /// People per step of ordered events within a conversion window (ClickHouse
    /// windowFunnel semantics), conversion between steps and median time between them.
    Funnel(FunnelArgs),
    /// Of the people who did an event (first time ever, or in a period) or are in a pack,
    /// how many came back 0, 1, … days or weeks later.
    Retention(RetentionArgs),
    /// A campaign's funnel (target → reached → clicked → converted), the value it made and
    /// lost, its cost and ROI, and the uplift over a holdout pack.
    Roi {
        /// The campaign as JSON (campaign, audience, control, from, to, days, conversion,
        /// positive, negative, cost): a file, or - for stdin.
        #[arg(long)]
        spec: String,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Save a report under a name: run now, on a schedule, and whenever a pack it reads gets
    /// a new version; every run lands in report_runs and report_funnel / _retention / _roi.
    Save {
        name: String,
        /// funnel, retention or roi.
        #[arg(long)]
        kind: String,
        /// The report's request as JSON (as POST /api/reports/KIND takes it): a file, or -.
        #[arg(long)]
        spec: String,
        /// Five-field cron schedule of refreshes.
        #[arg(long)]
        schedule: Option<String>,
        /// Zone the schedule is read in (default UTC).
        #[arg(long)]
        zone: Option<String>,
        #[arg(long)]
        description: Option<String>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Saved reports with their last run and next scheduled run.
    List {
        /// Include deleted reports.
        #[arg(long)]
        deleted: bool,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// A saved report: its spec, runs, and the rows of its newest version.
    Show {
        name: String,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Run a saved report now.
    Refresh {
        name: String,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Soft-delete a saved report (its rows stay).
    Delete { name: String },
    /// Restore a deleted saved report.
    Restore { name: String },
}

#[derive(Debug, Args)]
pub struct RetentionArgs {
    /// The cohort event (e.g. purchase); or --audience.
    #[arg(long)]
    pub cohort: Option<String>,
    /// A pack whose members form one cohort starting on --from.
    #[arg(long)]
    pub audience: Option<String>,
    /// The return event (default: any event).
    #[arg(long = "return")]
    pub returning: Option<String>,
    /// day or week (Monday weeks).
    #[arg(long, default_value = "day")]
    pub period: String,
    /// Periods after the cohort's (default 7 days or 8 weeks).
    #[arg(long)]
    pub periods: Option<u32>,
    /// first_time (cohort of a person's first cohort event) or recurring (every period
    /// with one).
    #[arg(long, default_value = "first_time")]
    pub kind: String,
    /// The whole request as JSON (events with filters): a file, or - for stdin; flags given
    /// too override it.
    #[arg(long)]
    pub spec: Option<String>,
    /// First day of the cohorts (default: 29 days before --to).
    #[arg(long)]
    pub from: Option<chrono::NaiveDate>,
    /// Last day of the cohorts (default: today in the catalog's zone).
    #[arg(long)]
    pub to: Option<chrono::NaiveDate>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct FunnelArgs {
    /// Step events in order, comma-separated (e.g. view_item,add_to_cart,purchase).
    #[arg(long)]
    pub steps: Option<String>,
    /// The whole request as JSON (steps with filters, exclusions…): a file, or - for stdin;
    /// flags given too override it.
    #[arg(long)]
    pub spec: Option<String>,
    /// Conversion window from the first step: 30m, 12h, 7d (default 7d).
    #[arg(long)]
    pub window: Option<String>,
    /// strict_order, strict_increase, strict_deduplication, comma-separated.
    #[arg(long)]
    pub mode: Option<String>,
    /// First day of events read (default: 29 days before --to).
    #[arg(long)]
    pub from: Option<chrono::NaiveDate>,
    /// Last day of events read (default: today in the catalog's zone).
    #[arg(long)]
    pub to: Option<chrono::NaiveDate>,
    /// Only members of this audience pack.
    #[arg(long)]
    pub audience: Option<String>,
    /// Leave out people with this event inside their chain: EVENT or EVENT:A-B (between
    /// steps A and B); repeatable.
    #[arg(long)]
    pub exclude: Vec<String>,
    /// Break down by a column: users.city (the person's) or events.channel (the chain's).
    #[arg(long)]
    pub breakdown: Option<String>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token with a role; it is printed once and stored only as a hash.
    Create {
        /// viewer, analyst or admin.
        #[arg(long)]
        role: shoal_catalog::Role,
        /// Who or what the token is for.
        #[arg(long, default_value = "cli")]
        name: String,
        /// Print `{"token", "token_id", "name", "role", …}`.
        #[arg(long)]
        json: bool,
    },
    /// List tokens (ids, names, roles, revocation), never their secrets.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by its id; it stops working at once.
    Revoke {
        /// The token id (the part after `shoal_`).
        token_id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum WriteKeyCommand {
    /// Create a write key; it is printed once and stored only as a hash.
    Create {
        /// What the key is for (a site, an app).
        name: String,
        /// Print `{"write_key", "name"}`.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Folder for the sample inputs.
    #[arg(long, default_value = "data/demo")]
    pub data: PathBuf,
    /// Number of people in the sample world.
    #[arg(long, default_value_t = 10_000)]
    pub users: u32,
    /// Seed of the sample world.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Stop after preparing the warehouse instead of serving.
    #[arg(long)]
    pub no_serve: bool,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum CatalogCommand {
    /// Print the tables and field standards in force.
    Show {
        /// Only this table.
        #[arg(long)]
        table: Option<String>,
        /// Print the whole definition as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Run the data-quality monitors; exits non-zero when one fails.
    Check {
        /// Print the results as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// List the warehouse's tables with their versions and row counts.
    Tables {
        /// Print as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Print a table's commits, newest first.
    History {
        /// Table name.
        table: String,
        /// At most this many commits.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Print as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Replace the catalog definition with a TOML file (checked first; a new revision).
    Apply {
        /// The definition, in the format of data/catalog.toml.
        file: PathBuf,
    },
}

#[derive(Debug, Args, Clone)]
pub struct ServeArgs {
    /// HTTP address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http: String,
    /// Seconds between checks for events and orders without a person; a build runs when
    /// there are some (0: never, build with `shoal build` or `POST /api/build`).
    #[arg(long, default_value_t = 60)]
    pub build_every: u64,
    /// Seconds between checks for dynamic packs whose refresh is due (0: no scheduler).
    #[arg(long, default_value_t = 30)]
    pub schedule_every: u64,
    /// Postgres wire endpoint for BI tools and psql (password = an API token); "off" to
    /// serve none.
    #[arg(long, default_value = "127.0.0.1:5433")]
    pub postgres: String,
    /// Requests per second each API token may make on /api (bursts of twice that); beyond it
    /// the answer is 429 with Retry-After. 0: no limit.
    #[arg(long, default_value_t = crate::rate_limit::DEFAULT_PER_SECOND)]
    pub rate_limit: u32,
    /// Seconds a client has to send a request's headers, and each next piece of its body,
    /// before the connection is closed (a body that stalls gets 408).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub client_timeout: u64,
    /// MiB of decoded columns kept between queries: data files never change, so a column a
    /// scan decoded serves later scans of its file (0: keep none, decode every time). Default:
    /// a sixth of the machine's memory, between 512 MiB and 16 GiB.
    #[arg(long)]
    pub column_cache_mib: Option<usize>,
}

/// The server's column cache by default, in MiB: a sixth of the machine's memory (2 GiB where
/// it cannot be read), at least 512 MiB and at most 16 GiB. A scan keeps its columns only
/// when they take at most half the cache: at 24 GiB that is the columns of a month of orders
/// at 10M people (1.2 GB decoded), which a 2 GiB cache read from Parquet at every count.
pub fn default_column_cache_mib() -> usize {
    let total_mib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|kib| {
                    kib.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<usize>()
                        .ok()
                })
        })
        .map(|kib| kib >> 10);
    total_mib.map_or(2048, |mib| (mib / 6).clamp(512, 16 << 10))
}
