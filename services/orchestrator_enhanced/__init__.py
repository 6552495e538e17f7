"""orchestrator-enhanced: the LangChain agent at the centre of the fleet (and, with ENABLE_LANGCHAIN=false, the
plain orchestrator). See pipeline.py for a turn, agent.py for the agent, app.py for the routes."""
