// A Worker on Postgres: node-postgres over TCP (under nodejs_compat, pg reaches the
// database through the runtime's sockets), every setting a binding.
import pg from "pg";

async function withClient(env, work) {
  const client = new pg.Client({ connectionString: env.DATABASE_URL });
  await client.connect();
  try {
    await client.query("CREATE TABLE IF NOT EXISTS notes (id serial PRIMARY KEY, body text NOT NULL)");
    return await work(client);
  } finally {
    await client.end();
  }
}

async function sha256(text) {
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    if (url.pathname === "/health") {
      return Response.json({ status: "ok", commit: env.BRANCHLINE_COMMIT ?? null });
    }
    if (url.pathname.startsWith("/var/")) {
      // A plain variable's value (never the secret's).
      const name = url.pathname.slice("/var/".length);
      const value = name === "API_SECRET" ? undefined : env[name];
      return Response.json({ [name]: typeof value === "string" ? value : null });
    }
    if (url.pathname === "/secret") {
      // Its digest only: the value itself is never shown.
      const value = env.API_SECRET;
      return Response.json({ set: typeof value === "string", sha256: value ? await sha256(value) : null });
    }
    if (url.pathname === "/notes" && request.method === "POST") {
      const body = await request.text();
      const result = await withClient(env, (c) =>
        c.query("INSERT INTO notes (body) VALUES ($1) RETURNING id", [body]));
      return Response.json({ id: result.rows[0].id }, { status: 201 });
    }
    if (url.pathname === "/notes") {
      const result = await withClient(env, (c) =>
        c.query("SELECT id, body, current_database() AS db FROM notes ORDER BY id"));
      return Response.json(result.rows);
    }
    return new Response("not found", { status: 404 });
  },
};
