-- What the provider called the message (its id, or our Message-ID for mail) and what it last reported
-- about it through a delivery callback.
ALTER TABLE deliveries ADD COLUMN provider_message_id text;
ALTER TABLE deliveries ADD COLUMN provider_status text;
ALTER TABLE deliveries ADD COLUMN provider_reported_at timestamptz;
CREATE INDEX deliveries_provider_message ON deliveries (channel, provider_message_id)
    WHERE provider_message_id IS NOT NULL;
