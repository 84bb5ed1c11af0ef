// web without auth, api or a database: it says what is unavailable instead of failing.
import assert from "node:assert/strict";
import { test } from "node:test";
import worker from "../../services/web/src/index.js";

const NOWHERE = { DATABASE_URL: "postgresql://nobody@127.0.0.1:1/none", BRANCHLINE_COMMIT: "abc1234" };

test("without API_URL the page says api is unavailable", async () => {
  const answer = await worker.fetch(new Request("http://web/"), NOWHERE);
  assert.equal(answer.status, 200);
  assert.match(await answer.text(), /api unavailable \(API_URL is not set\)/);
});

test("an api that does not answer is unavailable too", async () => {
  const env = { ...NOWHERE, API_URL: "http://127.0.0.1:1" };
  const answer = await worker.fetch(new Request("http://web/"), env);
  assert.match(await answer.text(), /api unavailable/);
});

test("health reports the commit, and 503 without the database", async () => {
  const answer = await worker.fetch(new Request("http://web/health"), NOWHERE);
  assert.equal(answer.status, 503);
  const body = await answer.json();
  assert.deepEqual([body.service, body.commit, body.status], ["web", "abc1234", "error"]);
});
