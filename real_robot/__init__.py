"""Real-robot asynchronous RL: actor next to the robot, learner on a GPU box, ZMQ between.

``bridge/``   wire schema (msgpack + raw numpy frames), CURVE transport, keys, spool, actor link
``robots``    RobotEnv over LeRobot robots; SimRobot serves any ``envs`` task the same way
``actor``     fixed-rate control loop, human-in-the-loop modes, stats
``safety``    action limits, watchdog
``teleop``    LeRobot teleoperators, keys, a scripted human for tests
``learner``   receive -> durable log -> ack -> replay -> SAC at an enforced UTD -> weights
``cli``       ``embodied-learner``, ``embodied-actor``, ``embodied-keygen``
"""
