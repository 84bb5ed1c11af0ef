// workers api: products and purchases, on Postgres (tables products, purchases; it
// reads auth's sessions to know who asks).
//
//   GET  /products                     200 [{id, sku, name, price_cents}]
//   GET  /purchases  (Bearer <token>)  200 the caller's purchases; 401 without a session
//   POST /purchases  {product_id}      201 {id, product, amount_cents}; 404 unknown product
//   GET  /health     {status, service, commit, release, database}; 503 without its database
//
// Bindings: DATABASE_URL, AUTH_SECRET (the same as auth's: session tokens are stored
// as their HMAC with it), BRANCHLINE_COMMIT and BRANCHLINE_RELEASE.
import pg from "pg";

const SERVICE = "api";
// What this release reads: /health fails when a column is missing, so that a release
// tried against a migrated copy of production tells whether it still works there.
const SCHEMA = {
  products: ["id", "sku", "name", "price_cents"],
  purchases: ["id", "user_id", "product_id", "amount_cents", "created_at"],
  sessions: ["token_hash", "user_id", "expires_at"],
};

export class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function withDb(env, work) {
  const client = new pg.Client({ connectionString: env.DATABASE_URL, connectionTimeoutMillis: 5000 });
  await client.connect();
  try {
    return await work(client);
  } finally {
    await client.end();
  }
}

async function health(env) {
  const body = {
    status: "ok",
    service: SERVICE,
    commit: env.BRANCHLINE_COMMIT || "dev",
    release: env.BRANCHLINE_RELEASE || "dev",
    database: "ok",
  };
  try {
    await withDb(env, async (db) => {
      for (const [table, columns] of Object.entries(SCHEMA)) {
        await db.query(`SELECT ${columns.join(", ")} FROM ${table} LIMIT 0`);
      }
    });
  } catch (error) {
    const why = String(error.message || error.code || error).split("\n")[0];
    return Response.json({ ...body, status: "error", database: why }, { status: 503 });
  }
  return Response.json(body);
}

const hex = (bytes) => [...new Uint8Array(bytes)].map((b) => b.toString(16).padStart(2, "0")).join("");

async function tokenHash(token, secret) {
  const key = await crypto.subtle.importKey(
    "raw", new TextEncoder().encode(secret || ""), { name: "HMAC", hash: "SHA-256" }, false, ["sign"],
  );
  return hex(await crypto.subtle.sign("HMAC", key, new TextEncoder().encode(token)));
}

// The caller's user id, from its session token; 401 when it has none.
async function caller(request, env, db) {
  const [scheme, token] = (request.headers.get("Authorization") || "").split(" ");
  if (scheme === "Bearer" && token) {
    const found = await db.query(
      "SELECT user_id FROM sessions WHERE token_hash = $1 AND expires_at > now()",
      [await tokenHash(token, env.AUTH_SECRET)],
    );
    if (found.rowCount === 1) return found.rows[0].user_id;
  }
  throw new HttpError(401, "sign in first (Authorization: Bearer <token>)");
}

const signedIn = (request) => (request.headers.get("Authorization") || "").startsWith("Bearer ");

async function products(request, env) {
  const found = await withDb(env, (db) =>
    db.query("SELECT id, sku, name, price_cents FROM products ORDER BY id"),
  );
  return Response.json(found.rows.map((p) => ({ ...p, id: Number(p.id) })));
}

async function purchases(request, env) {
  if (!signedIn(request)) throw new HttpError(401, "sign in first (Authorization: Bearer <token>)");
  return withDb(env, async (db) => {
    const user = await caller(request, env, db);
    const found = await db.query(
      "SELECT b.id, p.name AS product, b.amount_cents FROM purchases b" +
        " JOIN products p ON p.id = b.product_id WHERE b.user_id = $1 ORDER BY b.id",
      [user],
    );
    return Response.json(found.rows.map((b) => ({ ...b, id: Number(b.id) })));
  });
}

async function buy(request, env) {
  if (!signedIn(request)) throw new HttpError(401, "sign in first (Authorization: Bearer <token>)");
  let body;
  try {
    body = await request.json();
  } catch {
    throw new HttpError(400, "send JSON: {product_id}");
  }
  const productId = Number(body?.product_id);
  if (!Number.isInteger(productId) || productId <= 0) throw new HttpError(400, "product_id is a number");
  return withDb(env, async (db) => {
    const user = await caller(request, env, db);
    const made = await db.query(
      "INSERT INTO purchases (user_id, product_id, amount_cents)" +
        " SELECT $1, id, price_cents FROM products WHERE id = $2 RETURNING id, amount_cents",
      [user, productId],
    );
    if (made.rowCount === 0) throw new HttpError(404, `no product ${productId}`);
    const { id, amount_cents } = made.rows[0];
    return Response.json({ id: Number(id), product_id: productId, amount_cents }, { status: 201 });
  });
}

const ROUTES = {
  "GET /health": (request, env) => health(env),
  "GET /products": products,
  "GET /purchases": purchases,
  "POST /purchases": buy,
};

export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    const route = ROUTES[`${request.method} ${url.pathname}`];
    if (!route) return Response.json({ error: "not found" }, { status: 404 });
    try {
      return await route(request, env);
    } catch (error) {
      if (error instanceof HttpError) return Response.json({ error: error.message }, { status: error.status });
      console.error(`${SERVICE}: ${request.method} ${url.pathname}: ${error.stack || error}`);
      return Response.json({ error: "internal error" }, { status: 500 });
    }
  },
};
