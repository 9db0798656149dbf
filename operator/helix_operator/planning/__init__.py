"""What the planner is asked, when to replan, and running the planner off the event loop."""
