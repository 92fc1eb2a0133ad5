"""The cut and the plan: the seam read from Kafka once per job and epoch, and the pure planner."""
