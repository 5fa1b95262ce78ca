"""Launch face_perception_node.

    ros2 launch face_perception face_perception.launch.py camera:=/camera/image_raw
    ros2 launch face_perception face_perception.launch.py namespace:=robot1 params_file:=/path/params.yaml
    ros2 launch face_perception face_perception.launch.py rviz:=true

With rviz:=true, RViz 2 starts in the node's namespace with config/face_perception.rviz,
whose image topics are relative, so they follow the namespace.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
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
        DeclareLaunchArgument('rviz', default_value='false',
                              description='Also start rviz2 with config/face_perception.rviz '
                                          '(needs the rviz2 package) in the same namespace.'),
        Node(
            package='face_perception',
            executable='face_perception_node',
            name='face_perception',
            namespace=namespace,
            parameters=[params_file],
            remappings=[('image', camera), ('image/compressed', [camera, '/compressed'])],
            output='screen',
        ),
        Node(
            package='rviz2',
            executable='rviz2',
            name='face_perception_rviz',
            namespace=namespace,
            arguments=['-d', os.path.join(share, 'config', 'face_perception.rviz')],
            condition=IfCondition(LaunchConfiguration('rviz')),
            output='screen',
        ),
    ])
