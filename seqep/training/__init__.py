"""Training: builders (config -> objects), the Trainer (fit / train_epoch / evaluate), checkpoints, tracking
(metrics files and loggers) and seqep's own learning-rate schedules."""
