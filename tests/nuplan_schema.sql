-- Copied from shared/nuplan_schema.sql so the tests are self-contained (tests/nuplan_fixture.py reads it).
-- Minimal nuPlan log-DB schema subset for tests (written from the documented facts;
-- column names/order follow the devkit ORM + docs/nuplan_schema.md).
-- Tokens: 8-byte BLOBs (hex string of 16 chars in Python via bytes.hex()/bytes.fromhex()).
-- Timestamps: INTEGER microseconds since Unix epoch.
-- camera.translation/rotation/intrinsic/distortion: pickled Python objects stored as BLOB.
-- SQLite does not enforce the FOREIGN KEYs unless PRAGMA foreign_keys=ON.

CREATE TABLE log (
    token        BLOB NOT NULL,
    vehicle_name VARCHAR(64),
    date         VARCHAR(64),
    timestamp    INTEGER,
    logfile      VARCHAR(64),
    location     VARCHAR(64),
    map_version  VARCHAR(64),
    PRIMARY KEY (token)
);

CREATE TABLE camera (
    token       BLOB NOT NULL,
    log_token   BLOB NOT NULL,
    channel     VARCHAR(64),
    model       VARCHAR(64),
    translation BLOB,
    rotation    BLOB,
    intrinsic   BLOB,
    distortion  BLOB,
    width       INTEGER,
    height      INTEGER,
    PRIMARY KEY (token),
    FOREIGN KEY (log_token) REFERENCES log (token)
);

CREATE TABLE ego_pose (
    token          BLOB NOT NULL,
    timestamp      INTEGER,
    x FLOAT, y FLOAT, z FLOAT,
    qw FLOAT, qx FLOAT, qy FLOAT, qz FLOAT,
    vx FLOAT, vy FLOAT, vz FLOAT,
    acceleration_x FLOAT, acceleration_y FLOAT, acceleration_z FLOAT,
    angular_rate_x FLOAT, angular_rate_y FLOAT, angular_rate_z FLOAT,
    epsg           INTEGER,
    log_token      BLOB NOT NULL,
    PRIMARY KEY (token),
    FOREIGN KEY (log_token) REFERENCES log (token)
);

CREATE TABLE image (
    token          BLOB NOT NULL,
    next_token     BLOB,
    prev_token     BLOB,
    ego_pose_token BLOB NOT NULL,
    camera_token   BLOB NOT NULL,
    filename_jpg   VARCHAR(128),
    timestamp      INTEGER,
    PRIMARY KEY (token),
    FOREIGN KEY (next_token) REFERENCES image (token),
    FOREIGN KEY (prev_token) REFERENCES image (token),
    FOREIGN KEY (ego_pose_token) REFERENCES ego_pose (token),
    FOREIGN KEY (camera_token) REFERENCES camera (token)
);

CREATE TABLE lidar (
    token       BLOB NOT NULL,
    log_token   BLOB NOT NULL,
    channel     VARCHAR(64),
    model       VARCHAR(64),
    translation BLOB,
    rotation    BLOB,
    PRIMARY KEY (token),
    FOREIGN KEY (log_token) REFERENCES log (token)
);

CREATE TABLE scene (
    token               BLOB NOT NULL,
    log_token           BLOB NOT NULL,
    name                TEXT,
    goal_ego_pose_token BLOB,
    roadblock_ids       TEXT,
    PRIMARY KEY (token),
    FOREIGN KEY (log_token) REFERENCES log (token),
    FOREIGN KEY (goal_ego_pose_token) REFERENCES ego_pose (token)
);

CREATE TABLE lidar_pc (
    token          BLOB NOT NULL,
    next_token     BLOB,
    prev_token     BLOB,
    ego_pose_token BLOB NOT NULL,
    lidar_token    BLOB NOT NULL,
    scene_token    BLOB,
    filename       VARCHAR(128),
    timestamp      INTEGER,
    PRIMARY KEY (token),
    FOREIGN KEY (next_token) REFERENCES lidar_pc (token),
    FOREIGN KEY (prev_token) REFERENCES lidar_pc (token),
    FOREIGN KEY (ego_pose_token) REFERENCES ego_pose (token),
    FOREIGN KEY (lidar_token) REFERENCES lidar (token),
    FOREIGN KEY (scene_token) REFERENCES scene (token)
);

CREATE TABLE category (
    token       BLOB NOT NULL,
    name        VARCHAR(64),
    description TEXT,
    PRIMARY KEY (token)
);

CREATE TABLE track (
    token          BLOB NOT NULL,
    category_token BLOB NOT NULL,
    width  FLOAT,
    length FLOAT,
    height FLOAT,
    PRIMARY KEY (token),
    FOREIGN KEY (category_token) REFERENCES category (token)
);

CREATE TABLE lidar_box (
    token          BLOB NOT NULL,
    lidar_pc_token BLOB NOT NULL,
    track_token    BLOB NOT NULL,
    next_token     BLOB,
    prev_token     BLOB,
    x FLOAT, y FLOAT, z FLOAT,
    width FLOAT, length FLOAT, height FLOAT,
    vx FLOAT, vy FLOAT, vz FLOAT,
    yaw FLOAT,
    confidence FLOAT,
    PRIMARY KEY (token),
    FOREIGN KEY (lidar_pc_token) REFERENCES lidar_pc (token),
    FOREIGN KEY (track_token) REFERENCES track (token),
    FOREIGN KEY (next_token) REFERENCES lidar_box (token),
    FOREIGN KEY (prev_token) REFERENCES lidar_box (token)
);

CREATE TABLE scenario_tag (
    token             BLOB NOT NULL,
    lidar_pc_token    BLOB NOT NULL,
    type              TEXT,
    agent_track_token BLOB,
    PRIMARY KEY (token),
    FOREIGN KEY (lidar_pc_token) REFERENCES lidar_pc (token),
    FOREIGN KEY (agent_track_token) REFERENCES track (token)
);

CREATE TABLE traffic_light_status (
    token             BLOB NOT NULL,
    lidar_pc_token    BLOB NOT NULL,
    lane_connector_id INTEGER,
    status            VARCHAR(8),
    PRIMARY KEY (token),
    FOREIGN KEY (lidar_pc_token) REFERENCES lidar_pc (token)
);
