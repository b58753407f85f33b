//! `shoal demo-data` and `shoal demo`.

use std::path::Path;

use shoal_catalog::{Catalog, Warehouse};
use shoal_ingest::sample::{SampleManifest, SampleOptions, write_sample};

use crate::cli::{DemoArgs, DemoDataArgs};
use crate::error::AppResult;
use crate::progress;

/// Writes the sample world and prints its manifest.
pub fn demo_data(args: &DemoDataArgs, quiet: bool) -> AppResult<()> {
    let options = SampleOptions {
        users: args.users,
        seed: args.seed,
        end: args.end,
        days: args.days,
        first: args.first,
    };
    let manifest = generate(&args.out, &options, quiet)?;
    if args.json {
        println!("{}", serde_json::to_string(&manifest).unwrap_or_default());
    } else {
        print_manifest(&args.out, &manifest);
    }
    Ok(())
}

fn generate(out: &Path, options: &SampleOptions, quiet: bool) -> AppResult<SampleManifest> {
    let bar = progress::bar(quiet, "sample", u64::from(options.users));
    let mut phase = String::new();
    let manifest = write_sample(out, options, &mut |name, done, total| {
        if name != phase {
            phase = name.to_string();
            bar.set_message(name.to_string());
            bar.set_length(total);
        }
        bar.set_position(done);
    })?;
    bar.finish_and_clear();
    Ok(manifest)
}

fn print_manifest(out: &Path, manifest: &SampleManifest) {
    println!(
        "sample world: {} people, seed {}, {} days to {}, in {}",
        manifest.users,
        manifest.seed,
        manifest.days,
        manifest.end,
        out.display()
    );
    for file in &manifest.files {
        let planted: u64 = file.planted.values().sum();
        let kinds: Vec<String> = file
            .planted
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        println!(
            "  {:<22} {:>9} rows  {:<8} planted bad rows {planted:>5} ({})",
            file.file,
            file.rows,
            file.source,
            kinds.join(", ")
        );
    }
}

/// The main job on the embedded default: sample world → warehouse → serve.
pub async fn demo(args: &DemoArgs, warehouse: &str, quiet: bool) -> AppResult<()> {
    let beijing = chrono::FixedOffset::east_opt(8 * 3600).expect("UTC+8 is a valid offset");
    let end = chrono::Utc::now().with_timezone(&beijing).date_naive();
    let options = SampleOptions {
        users: args.users,
        seed: args.seed,
        end,
        days: 90,
        first: 0,
    };
    let manifest_path = args.data.join("manifest.json");
    let existing: Option<SampleManifest> = std::fs::read_to_string(&manifest_path)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok());
    let manifest = match existing {
        Some(m) if m.users == options.users && m.seed == options.seed && m.end == options.end => {
            progress::note(
                quiet,
                &format!("sample world already in {}", args.data.display()),
            );
            m
        }
        _ => {
            let out = args.data.clone();
            let opts = options.clone();
            tokio::task::spawn_blocking(move || generate(&out, &opts, quiet))
                .await
                .map_err(|e| crate::error::AppError::Internal(e.to_string()))??
        }
    };
    print_manifest(&args.data, &manifest);

    let warehouse = Warehouse::open(warehouse)?;
    let catalog = Catalog::open(warehouse).await?;
    for file in &manifest.files {
        let source: shoal_ingest::SourceKind = file
            .source
            .parse()
            .map_err(crate::error::AppError::Internal)?;
        let path = args.data.join(&file.file);
        let report =
            crate::ingest_commands::run(&catalog, source, &[path.as_path()], quiet).await?;
        println!("{}: {}", file.file, shoal_ingest::describe(&report));
    }
    let build = crate::build_commands::run_build(
        &catalog,
        &shoal_ingest::build::BuildOptions {
            full: false,
            as_of: None,
        },
        quiet,
    )
    .await?;
    println!("{}", crate::build_commands::describe(&build));
    let tables = catalog.warehouse().table_names().await?;
    println!(
        "warehouse {} ready: catalog revision {}, tables {}",
        catalog.warehouse().root(),
        catalog.revision(),
        tables.join(", ")
    );
    print_sample_counts(&catalog).await?;
    if crate::write_keys::active_hashes(&catalog).await?.is_empty() {
        let key = crate::write_keys::create(&catalog, "demo").await?;
        println!("tracking API write key (shown once): {key}");
    }
    let token = crate::tokens::create(&catalog, "demo", shoal_catalog::Role::Admin, "demo").await?;
    println!(
        "admin API token (shown once; `shoal token create --role analyst` makes more): {}",
        token.token
    );
    println!(
        "  try: curl -H 'Authorization: Bearer {}' http://{}/api/whoami",
        token.token, args.serve.http
    );
    println!(
        "web console: http://{}/?token={}  (signs in once; the token leaves the address bar)",
        args.serve.http, token.token
    );
    if args.no_serve {
        return Ok(());
    }
    crate::serve::serve(catalog, &args.serve).await
}

/// A few audiences of the sample world, counted as the builder would count them.
async fn print_sample_counts(catalog: &Catalog) -> AppResult<()> {
    let engine = shoal_query::Engine::new(Default::default());
    let session = engine.session(catalog).await?;
    let samples = [
        (
            "middle-aged men",
            serde_json::json!({"derived": "middle_aged_male"}),
        ),
        (
            "high-value customers",
            serde_json::json!({"derived": "high_value"}),
        ),
        (
            "viewed items in the last 7 days, no purchase in 30",
            serde_json::json!({"all": [
                {"event": "view_item", "window": {"last_days": 7}},
                {"not": {"event": "purchase", "window": {"last_days": 30}}}
            ]}),
        ),
    ];
    println!("sample audiences (shoal count / POST /api/query/count):");
    for (name, tree) in samples {
        let prepared =
            shoal_query::count::prepare(&session, &tree, shoal_catalog::Role::Analyst, None)?;
        let answer =
            shoal_query::count::count(&engine, &session, &prepared, Default::default()).await?;
        let path = serde_json::to_value(answer.path).unwrap_or_default();
        println!(
            "  {name:<52} {:>8} users  ({} path, {:.1} ms)",
            answer.count,
            path.as_str().unwrap_or_default(),
            answer.elapsed_ms
        );
    }
    Ok(())
}
