-- The days the liveboard counts by (Asia/Ho_Chi_Minh), and how each completed dossier ended.
ALTER TABLE dossier_progress
    ADD COLUMN received_on  date,
    ADD COLUMN completed_on date,
    ADD COLUMN timeliness   text;
CREATE INDEX dossier_progress_received_on ON dossier_progress (received_on);
CREATE INDEX dossier_progress_completed_on ON dossier_progress (completed_on);
