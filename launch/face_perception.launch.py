"""Launch face_perception_node.

    ros2 launch face_perception face_perception.launch.py camera:=/camera/image_raw
    ros2 launch face_perception face_perception.launch.py namespace:=robot1 params_file:=/path/params.yaml
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def generate_launch_description():
    share = get_package_share_directory('face_perception')
    camera = LaunchConfiguration('camera')
    namespace = LaunchConfiguration('namespace')
    params_file = LaunchConfiguration('params_file')
    return LaunchDescription([
        DeclareLaunchArgument('camera', default_value='/camera/image_raw',
                              description='Image topic to analyse (sensor_msgs/Image); '
                                          'with input_transport "compressed", its /compressed topic is used.'),
        DeclareLaunchArgument('namespace', default_value='',
                              description='Namespace of the node and its output topics.'),
        DeclareLaunchArgument('params_file',
                              default_value=os.path.join(share, 'config', 'params.yaml'),
                              description='Parameters file (every parameter: config/params.yaml).'),
        Node(
            package='face_perception',
            executable='face_perception_node',
            name='face_perception',
            namespace=namespace,
            parameters=[params_file],
            remappings=[('image', camera), ('image/compressed', [camera, '/compressed'])],
            output='screen',
        ),
    ])
