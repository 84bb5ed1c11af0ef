// workers auth: sign-up, log-in and sessions, on Postgres (tables users, sessions).
//
//   POST /signup {email, password}   201 {token, user}; 400 when invalid, 409 when taken
//   POST /login  {email, password}   200 {token, user}; 401 when wrong
//   GET  /me     (Authorization: Bearer <token>)   200 {id, email}; 401 otherwise
//   GET  /health {status, service, commit, release, database}; 503 without its database
//
// Bindings: DATABASE_URL, AUTH_SECRET (peppers the stored token hashes; api uses the
// same), SESSION_DAYS (default 14), BRANCHLINE_COMMIT and BRANCHLINE_RELEASE.
import pg from "pg";

const SERVICE = "auth";
// What this release reads: /health fails when a column is missing, so that a release
// tried against a migrated copy of production tells whether it still works there.
const SCHEMA = {
  users: ["id", "email", "password_hash"],
  sessions: ["token_hash", "user_id", "expires_at"],
};
const ITERATIONS = 20000; // PBKDF2-SHA256 rounds of a stored password

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

export async function tokenHash(token, secret) {
  const key = await crypto.subtle.importKey(
    "raw", new TextEncoder().encode(secret || ""), { name: "HMAC", hash: "SHA-256" }, false, ["sign"],
  );
  return hex(await crypto.subtle.sign("HMAC", key, new TextEncoder().encode(token)));
}

export async function hashPassword(password, salt = hex(crypto.getRandomValues(new Uint8Array(16)))) {
  const key = await crypto.subtle.importKey("raw", new TextEncoder().encode(password), "PBKDF2", false, [
    "deriveBits",
  ]);
  const bits = await crypto.subtle.deriveBits(
    { name: "PBKDF2", hash: "SHA-256", salt: new TextEncoder().encode(salt), iterations: ITERATIONS },
    key,
    256,
  );
  return `pbkdf2$${ITERATIONS}$${salt}$${hex(bits)}`;
}

export async function passwordMatches(password, stored) {
  const [, , salt] = stored.split("$");
  return (await hashPassword(password, salt)) === stored;
}

async function credentials(request) {
  let body;
  try {
    body = await request.json();
  } catch {
    throw new HttpError(400, "send JSON: {email, password}");
  }
  const email = String(body?.email ?? "").trim().toLowerCase();
  const password = String(body?.password ?? "");
  if (!/^[^@\s]+@[^@\s]+$/.test(email)) throw new HttpError(400, "an email address is needed");
  if (password.length < 8) throw new HttpError(400, "the password needs 8 characters or more");
  return { email, password };
}

async function startSession(db, env, user) {
  const token = hex(crypto.getRandomValues(new Uint8Array(32)));
  const days = Number(env.SESSION_DAYS || 14);
  await db.query(
    "INSERT INTO sessions (token_hash, user_id, expires_at) VALUES ($1, $2, now() + make_interval(days => $3))",
    [await tokenHash(token, env.AUTH_SECRET), user.id, days],
  );
  return { token, user: { id: Number(user.id), email: user.email } };
}

async function signup(request, env) {
  const { email, password } = await credentials(request);
  const stored = await hashPassword(password);
  return withDb(env, async (db) => {
    const made = await db.query(
      "INSERT INTO users (email, password_hash) VALUES ($1, $2) ON CONFLICT (email) DO NOTHING RETURNING id, email",
      [email, stored],
    );
    if (made.rowCount === 0) throw new HttpError(409, "that email is taken");
    return Response.json(await startSession(db, env, made.rows[0]), { status: 201 });
  });
}

async function login(request, env) {
  const { email, password } = await credentials(request);
  return withDb(env, async (db) => {
    const found = await db.query("SELECT id, email, password_hash FROM users WHERE email = $1", [email]);
    const user = found.rows[0];
    if (!user || !(await passwordMatches(password, user.password_hash))) {
      throw new HttpError(401, "wrong email or password");
    }
    return Response.json(await startSession(db, env, user));
  });
}

async function me(request, env) {
  const [scheme, token] = (request.headers.get("Authorization") || "").split(" ");
  if (scheme !== "Bearer" || !token) throw new HttpError(401, "sign in first (Authorization: Bearer <token>)");
  const hash = await tokenHash(token, env.AUTH_SECRET);
  return withDb(env, async (db) => {
    const found = await db.query(
      "SELECT u.id, u.email FROM sessions s JOIN users u ON u.id = s.user_id" +
        " WHERE s.token_hash = $1 AND s.expires_at > now()",
      [hash],
    );
    if (found.rowCount === 0) throw new HttpError(401, "sign in first (Authorization: Bearer <token>)");
    return Response.json({ id: Number(found.rows[0].id), email: found.rows[0].email });
  });
}

const ROUTES = {
  "GET /health": (request, env) => health(env),
  "POST /signup": signup,
  "POST /login": login,
  "GET /me": me,
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
