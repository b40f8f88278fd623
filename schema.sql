-- sidechat's whole schema. Applied at every start-up, so every statement is idempotent.
-- A change here that an older database needs besides is a numbered step in chat/upgrades.py.

CREATE TABLE IF NOT EXISTS conversations (
    id          INTEGER PRIMARY KEY,
    user_id     TEXT    NOT NULL DEFAULT 'local',
    title       TEXT,
    system      TEXT,
    provider    TEXT,
    model       TEXT,
    created_at  TEXT    NOT NULL,
    updated_at  TEXT    NOT NULL  -- last activity: drives the list order
);

-- The conversation list: one user's conversations, newest activity first, keyset-paginated.
CREATE INDEX IF NOT EXISTS conversations_by_activity
    ON conversations (user_id, updated_at DESC, id DESC);

-- Who else may read and post in a conversation: its members. Only the owner (its
-- `user_id`) renames, deletes or changes members; the owner is never a member too.
CREATE TABLE IF NOT EXISTS members (
    conversation_id  INTEGER NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    user_id          TEXT    NOT NULL,
    added_at         TEXT    NOT NULL,
    PRIMARY KEY (conversation_id, user_id)
);

-- The conversations a user is a member of, for their list and their feed.
CREATE INDEX IF NOT EXISTS members_by_user ON members (user_id, conversation_id);

CREATE TABLE IF NOT EXISTS messages (
    id               INTEGER PRIMARY KEY,
    conversation_id  INTEGER NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    role             TEXT    NOT NULL CHECK (role IN ('user', 'assistant', 'system')),
    content          TEXT    NOT NULL DEFAULT '',
    status           TEXT    NOT NULL CHECK (
                         status IN ('streaming', 'completed', 'failed', 'cancelled', 'interrupted')
                     ),
    metadata         TEXT    NOT NULL DEFAULT '{}' CHECK (json_valid(metadata)),
    last_event_id    INTEGER NOT NULL DEFAULT 0,  -- id of the stream's terminal event, for resume
    idempotency_key  TEXT,                        -- '<user>:<Idempotency-Key>' on a generation's user message
    request_hash     TEXT,                        -- with a key: what was asked, so the key is refused for another
    user_id          TEXT,                        -- who wrote a user message (a shared conversation has several)
    created_at       TEXT    NOT NULL,
    completed_at     TEXT
);

-- A conversation's messages in order (also serves the foreign key's cascade and after_id).
CREATE INDEX IF NOT EXISTS messages_by_conversation ON messages (conversation_id, id);

-- Start-up recovery finds rows a crash left mid-generation without a full scan.
CREATE INDEX IF NOT EXISTS messages_streaming ON messages (status) WHERE status = 'streaming';

-- A user's usage between two times (/api/usage) reads replies by when they ended (version 2).
CREATE INDEX IF NOT EXISTS replies_by_completion
    ON messages (completed_at) WHERE role = 'assistant';

-- A retried POST with the same Idempotency-Key finds the first attempt's messages.
CREATE UNIQUE INDEX IF NOT EXISTS messages_by_idempotency_key
    ON messages (idempotency_key) WHERE idempotency_key IS NOT NULL;

-- A conversation's activity is its newest message or reply ending; triggers keep it
-- so each write on the hot path is one statement.
CREATE TRIGGER IF NOT EXISTS message_added AFTER INSERT ON messages
BEGIN
    UPDATE conversations SET updated_at = NEW.created_at WHERE id = NEW.conversation_id;
END;

CREATE TRIGGER IF NOT EXISTS message_ended AFTER UPDATE OF status ON messages
    WHEN NEW.status <> OLD.status AND NEW.completed_at IS NOT NULL
BEGIN
    UPDATE conversations SET updated_at = NEW.completed_at WHERE id = NEW.conversation_id;
END;

-- A regenerated reply or an edited message is a new row whose metadata names the row it
-- `supersedes`; that row is marked `superseded_by` it in the same statement, so a turn is
-- never half replaced.
CREATE TRIGGER IF NOT EXISTS message_superseded AFTER INSERT ON messages
    WHEN json_extract(NEW.metadata, '$.supersedes') IS NOT NULL
BEGIN
    UPDATE messages SET metadata = json_set(metadata, '$.superseded_by', NEW.id)
    WHERE id = json_extract(NEW.metadata, '$.supersedes') AND conversation_id = NEW.conversation_id;
END;

-- /readyz writes here to learn whether the database still takes writes: one row, rewritten.
CREATE TABLE IF NOT EXISTS readiness (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    checked_at  TEXT    NOT NULL
);
