"""What a wave teaches: metrics, feedback and the monitor's health and anomalies."""
