-- api: what can be bought, and what was.
CREATE TABLE products (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sku         text NOT NULL UNIQUE,
    name        text NOT NULL,
    price_cents integer NOT NULL CHECK (price_cents > 0)
);

CREATE TABLE purchases (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id      bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    product_id   bigint NOT NULL REFERENCES products (id),
    amount_cents integer NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX purchases_user_id ON purchases (user_id);

INSERT INTO products (sku, name, price_cents) VALUES
    ('notebook', 'Grid notebook', 1200),
    ('pen', 'Fountain pen', 3500),
    ('ink', 'Blue ink, 50 ml', 900);
