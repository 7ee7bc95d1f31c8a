-- The platform's database: schema and seed data for mlops_prod.
--
-- Run as the owner role mlops, or as a superuser, connected to database mlops_prod:
--     psql -v ON_ERROR_STOP=1 -d mlops_prod -f schema.sql
-- Idempotent: tables are created only when missing and seeded only when empty, so running it
-- again, or after a restore, changes nothing.

BEGIN;

CREATE TABLE IF NOT EXISTS users (
    id         integer PRIMARY KEY,
    email      text NOT NULL UNIQUE,
    plan       text NOT NULL CHECK (plan IN ('free', 'team', 'enterprise')),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS models (
    version    text PRIMARY KEY,
    name       text NOT NULL,
    status     text NOT NULL CHECK (status IN ('production', 'candidate', 'retired')),
    accuracy   numeric(5, 4),
    trained_at timestamptz NOT NULL
);

-- An append-only record of every prediction served. user_id and model_version carry no foreign
-- keys on purpose: the record must outlive deleted users and retired models.
CREATE TABLE IF NOT EXISTS predictions (
    id            bigserial PRIMARY KEY,
    user_id       integer,
    model_version text NOT NULL,
    input         jsonb NOT NULL,
    output        text NOT NULL,
    latency_ms    double precision NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS predictions_created_at ON predictions (created_at);

-- Owned by mlops even when a superuser runs this, so the api-server can write.
ALTER TABLE users OWNER TO mlops;
ALTER TABLE models OWNER TO mlops;
ALTER TABLE predictions OWNER TO mlops;

-- 40 users, ids 1 to 40 (the traffic generator picks among them), joined over the past year.
INSERT INTO users (id, email, plan, created_at)
SELECT i,
       format('user%s@customers.mlops.local', i),
       (ARRAY['free', 'free', 'team', 'enterprise'])[1 + i % 4],
       now() - make_interval(days => 365 - i * 9)
FROM generate_series(1, 40) AS i
WHERE NOT EXISTS (SELECT 1 FROM users);

-- The model-server's releases (see mlops_platform/releases.py).
INSERT INTO models (version, name, status, accuracy, trained_at)
SELECT version, 'iris-logistic-regression', status, accuracy, now() - make_interval(days => age_days)
FROM (VALUES
    ('2.1.0', 'production', 0.9733, 60),
    ('2.2.0', 'candidate',  0.9733, 14),
    ('2.2.1', 'candidate',  0.9667, 10),
    ('2.2.2', 'candidate',  0.9733, 7),
    ('2.3.0', 'candidate',  0.9800, 3)
) AS seed (version, status, accuracy, age_days)
WHERE NOT EXISTS (SELECT 1 FROM models);

-- 400 past predictions by the production model, one every 25 minutes over the last week.
-- Derived from the row number, not random(), so every fresh database holds the same rows.
INSERT INTO predictions (user_id, model_version, input, output, latency_ms, created_at)
SELECT 1 + (i * 7) % 40,
       '2.1.0',
       jsonb_build_object('features', CASE i % 3
           WHEN 0 THEN jsonb_build_array(5.0 + (i % 5) / 10.0, 3.4, 1.5, 0.2)
           WHEN 1 THEN jsonb_build_array(5.9 + (i % 5) / 10.0, 2.8, 4.3, 1.3)
           ELSE        jsonb_build_array(6.6 + (i % 5) / 10.0, 3.0, 5.6, 2.1)
       END),
       (ARRAY['setosa', 'versicolor', 'virginica'])[1 + i % 3],
       18 + (i * 37) % 45,
       now() - make_interval(mins => i * 25)
FROM generate_series(1, 400) AS i
WHERE NOT EXISTS (SELECT 1 FROM predictions);

COMMIT;
