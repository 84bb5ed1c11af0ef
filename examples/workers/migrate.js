// Apply migrations/NNN_name.sql in order, each in one transaction, once:
//
//     npm ci && DATABASE_URL=postgresql://... node migrate.js
//
// Applied versions (NNN) are recorded in the journal table schema_migrations, which
// branchline reads to show what a database branch has. An advisory lock lets two runs
// at once wait for each other instead of failing.
import { readdirSync, readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";
import pg from "pg";

const MIGRATIONS = new URL("./migrations/", import.meta.url);
const LOCK = 7368434; // any number; the same in every run

export async function migrate(url) {
  const client = new pg.Client({ connectionString: url || undefined }); // empty: PG* variables
  await client.connect();
  const applied = [];
  try {
    await client.query(
      "CREATE TABLE IF NOT EXISTS schema_migrations (" +
        " version text PRIMARY KEY, name text NOT NULL," +
        " applied_at timestamptz NOT NULL DEFAULT now())",
    );
    const files = readdirSync(MIGRATIONS).filter((f) => /^\d+_.*\.sql$/.test(f)).sort();
    for (const file of files) {
      const version = file.split("_", 1)[0];
      const name = file.replace(/\.sql$/, "");
      await client.query("BEGIN");
      try {
        await client.query("SELECT pg_advisory_xact_lock($1)", [LOCK]);
        const done = await client.query("SELECT 1 FROM schema_migrations WHERE version = $1", [
          version,
        ]);
        if (done.rowCount === 0) {
          try {
            await client.query(readFileSync(new URL(file, MIGRATIONS), "utf8"));
          } catch (error) {
            throw new Error(`${file}: ${error.message}`);
          }
          await client.query("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", [
            version,
            name,
          ]);
          applied.push(name);
          console.log(`applied ${file}`);
        }
        await client.query("COMMIT");
      } catch (error) {
        await client.query("ROLLBACK");
        throw error;
      }
    }
  } finally {
    await client.end();
  }
  return applied;
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  try {
    const done = await migrate(process.env.DATABASE_URL ?? "");
    console.log(`migrate: ${done.length} applied, schema up to date`);
  } catch (error) {
    console.error(`migrate: ${error.message}`);
    process.exit(1);
  }
}
