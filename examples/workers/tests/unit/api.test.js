// api without a database: what it checks before it needs one.
import assert from "node:assert/strict";
import { test } from "node:test";
import worker from "../../services/api/src/index.js";

const NOWHERE = { DATABASE_URL: "postgresql://nobody@127.0.0.1:1/none", BRANCHLINE_COMMIT: "abc1234" };

test("purchases need a session", async () => {
  let answer = await worker.fetch(new Request("http://api/purchases"), NOWHERE);
  assert.equal(answer.status, 401);
  answer = await worker.fetch(
    new Request("http://api/purchases", { method: "POST", body: JSON.stringify({ product_id: 1 }) }),
    NOWHERE,
  );
  assert.equal(answer.status, 401);
});

test("an unknown route is a 404", async () => {
  const answer = await worker.fetch(new Request("http://api/nothing"), NOWHERE);
  assert.equal(answer.status, 404);
});

test("health reports the commit, and 503 without the database", async () => {
  const answer = await worker.fetch(new Request("http://api/health"), NOWHERE);
  assert.equal(answer.status, 503);
  const body = await answer.json();
  assert.deepEqual([body.service, body.commit, body.status], ["api", "abc1234", "error"]);
});
